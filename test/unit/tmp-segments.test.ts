/**
 * How /tmp is split into tar streams for stop/start (host-agent/src/tmp-archive.ts):
 * one per owner per layer, each directory restored before another owner's files
 * inside it, the sandbox user first within a layer, and the directories whose
 * mtime a later stream changes set again at the end. Pure, no Docker.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { tmpSegmentsOf } from '../../host-agent/src/tmp-archive';

const e = (path: string, uid: number, type = 'f', mtime = '1.5') => ({ path, uid, gid: uid, type, mtime });

describe('tmp archive streams', () => {
  it("puts one owner's tree in one stream, parents before children", () => {
    const plan = tmpSegmentsOf([e('./a/b/c', 1000), e('./a', 1000, 'd'), e('./a/b', 1000, 'd'), e('./z', 1000)], 1000);
    assert.deepEqual(plan.segments, [{ uid: 1000, gid: 1000, paths: ['./a', './z', './a/b', './a/b/c'] }]);
    assert.deepEqual(plan.times, []);
  });

  it("restores another owner's files after the directory they are in, and that directory's time after them", () => {
    const plan = tmpSegmentsOf(
      [
        e('./shared', 1000, 'd', '100.25'),
        e('./shared/theirs', 65534),
        e('./theirs-top', 65534),
        e('./mine', 1000),
        e('./theirs-dir', 65534, 'd'),
        e('./theirs-dir/mine-inside', 1000),
      ],
      1000,
    );
    assert.deepEqual(plan.segments, [
      { uid: 1000, gid: 1000, paths: ['./mine', './shared'] },
      { uid: 65534, gid: 65534, paths: ['./theirs-dir', './theirs-top'] },
      { uid: 1000, gid: 1000, paths: ['./theirs-dir/mine-inside'] },
      { uid: 65534, gid: 65534, paths: ['./shared/theirs'] },
    ]);
    assert.deepEqual(plan.times, [
      { uid: 1000, gid: 1000, dirs: [['100.25', 'shared']] },
      { uid: 65534, gid: 65534, dirs: [['1.5', 'theirs-dir']] },
    ]);
  });
});
