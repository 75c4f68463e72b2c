/**
 * Where a paused sandbox moved off a drained host keeps its state
 * (contract/host-protocol.ts): the prefix a start hands its new host, which
 * reads and deletes there, so only a sandbox's own prefix may pass.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { pausedStateKeys, pausedStatePrefix } from '../../contract/host-protocol';
import { resumeRequest } from '../../contract/host-requests';

const record = { tenant_id: 'acme', user_id: 'user.one@example', sandbox_id: 'sbx-abcdefghij0123456789' };

describe('paused state prefix', () => {
  it('lives under the user, outside the hot and cold tiers, with the request and the /tmp archive in it', () => {
    const prefix = pausedStatePrefix(record);
    assert.equal(prefix, 'tenants/acme/users/user.one@example/sandboxes/sbx-abcdefghij0123456789/paused/');
    assert.ok(!prefix.includes('/hot/') && !prefix.includes('/cold/'));
    assert.deepEqual(pausedStateKeys(prefix), { request: `${prefix}request.json`, tmp: `${prefix}tmp.tar` });
  });

  it('is what a resume request accepts, and nothing else', () => {
    const ok = resumeRequest.safeParse({ sandboxId: record.sandbox_id, relocate: { prefix: pausedStatePrefix(record) } });
    assert.equal(ok.success, true);
    for (const prefix of [
      'host-requests/x/',
      'tenants/acme/users/u/hot/',
      'tenants/acme/users/../sandboxes/sbx-a/paused/',
      'tenants/acme/users/u/sandboxes/sbx-a/paused/../../x/',
      'tenants/acme/users/u/sandboxes/sbx-a/paused',
    ]) {
      assert.equal(resumeRequest.safeParse({ sandboxId: record.sandbox_id, relocate: { prefix } }).success, false, prefix);
    }
    assert.equal(resumeRequest.safeParse({ sandboxId: record.sandbox_id }).success, true, 'a plain resume is unchanged');
  });
});
