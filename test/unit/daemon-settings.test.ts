/**
 * The host daemon's settings from its environment (host.env on a host): whole
 * numbers where a count is meant, so a typo stops the daemon with its name
 * instead of running a host with no slots.
 */
import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';
import { daemonSettings } from '../../host-agent/src/daemon';

const hostId = 'i-0123456789abcdef0';
const touched = ['HOST_ID', 'HOST_SLOTS', 'HOST_CREATE_CONCURRENCY', 'HOST_HEARTBEAT_SECONDS'];
const saved = Object.fromEntries(touched.map((k) => [k, process.env[k]]));

function withEnv(env: Record<string, string>) {
  for (const k of touched) delete process.env[k];
  Object.assign(process.env, { HOST_ID: hostId, ...env });
  return daemonSettings();
}

describe('host daemon settings', () => {
  afterEach(() => {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  });

  it('takes 8 slots by default and a whole number from HOST_SLOTS', () => {
    assert.equal(withEnv({}).slots, 8);
    assert.equal(withEnv({ HOST_SLOTS: '12' }).slots, 12);
  });

  for (const bad of ['0', '-1', '2.5', 'eight']) {
    it(`refuses HOST_SLOTS=${bad}, naming the setting`, () => {
      assert.throws(() => withEnv({ HOST_SLOTS: bad }), /HOST_SLOTS must be a whole number of at least 1/);
    });
  }

  it('refuses a create concurrency of 0, and takes fractional seconds where time is meant', () => {
    assert.throws(() => withEnv({ HOST_CREATE_CONCURRENCY: '0' }), /HOST_CREATE_CONCURRENCY must be a whole number/);
    assert.equal(withEnv({ HOST_HEARTBEAT_SECONDS: '0.5' }).heartbeatSeconds, 0.5);
  });

  it('refuses a host id that is not an instance id', () => {
    assert.throws(() => withEnv({ HOST_ID: 'host-1' }), /HOST_ID must be an EC2 or SSM managed instance id/);
  });
});
