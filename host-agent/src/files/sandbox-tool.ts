/**
 * The program every file operation runs inside a sandbox: `python3 -c` as the
 * sandbox user, in the sandbox's own mount namespace (a docker exec), so every
 * path is resolved the way the sandbox itself resolves it. A symlink to
 * /etc/passwd reads the container's file; /proc/1/root is the container's
 * init, which the sandbox user may not enter; a link swapped mid-call points
 * at most somewhere else inside the sandbox. The host never opens a sandbox
 * file through its own view of it.
 *
 * Protocol: argv is `<nonce> <op> <json arguments>` (no shell anywhere: docker
 * exec passes argv as given); bytes go through stdin and stdout; the outcome
 * is the last stderr line `ESBX-RESULT-<nonce> {"ok": ...}` or
 * `{"error": {"code", "path", "message"}}`. The nonce is made per call, so a
 * file name that tar prints cannot pose as the outcome.
 *
 * Writes go to a hidden temporary file beside the target and are renamed over
 * it once every byte announced arrived (and matched the sha256 when one was
 * given): a reader sees the old file or the new one, never half, and a stream
 * cut short never replaces anything. Archives unpack into a hidden directory
 * beside the target, then move into place.
 *
 * Only the image's python3, tar and gzip are used (Python's -I -S: no
 * environment, no site packages of the sandbox user).
 */
const sandboxFilesProgram = String.raw`
import errno, hashlib, json, os, stat, sys

CHUNK = 1 << 20
MARK = 'ESBX-RESULT-' + sys.argv[1] + ' '
CODES = {
    errno.ENOENT: 'not_found', errno.EACCES: 'permission_denied', errno.EPERM: 'permission_denied',
    errno.EROFS: 'permission_denied', errno.EISDIR: 'is_a_directory', errno.ENOTDIR: 'not_a_directory',
    errno.EEXIST: 'exists', errno.ENOTEMPTY: 'not_empty', errno.ENOSPC: 'no_space', errno.EDQUOT: 'no_space',
    errno.EFBIG: 'too_large', errno.ENAMETOOLONG: 'invalid_path', errno.ELOOP: 'invalid_path',
    errno.EINVAL: 'invalid_path', errno.EBUSY: 'busy', errno.ETXTBSY: 'busy',
}


class Fail(Exception):
    def __init__(self, code, path, message):
        Exception.__init__(self, message)
        self.code, self.path, self.message = code, path, message


def show(p):
    return os.fsdecode(p) if isinstance(p, bytes) else p


def oserr(e, path):
    # The kernel's own name for the path that failed, when it gave one.
    where = e.filename if e.filename is not None else path
    return Fail(CODES.get(e.errno, 'failed'), show(where), e.strerror or str(e))


def emit(obj, code):
    os.write(2, ('\n' + MARK + json.dumps(obj, ensure_ascii=True, separators=(',', ':')) + '\n').encode())
    os._exit(code)


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def kind(m):
    if stat.S_ISREG(m):
        return 'file'
    if stat.S_ISDIR(m):
        return 'dir'
    if stat.S_ISLNK(m):
        return 'symlink'
    return 'other'


def mode_of(m):
    return '%04o' % stat.S_IMODE(m)


def entry(path, name, st):
    e = {'path': show(path), 'name': show(name), 'type': kind(st.st_mode), 'size': st.st_size,
         'mode': mode_of(st.st_mode), 'mtime_ms': st.st_mtime_ns // 1000000}
    if stat.S_ISLNK(st.st_mode):
        e['link_target'] = show(os.readlink(path))
    return e


def lstat_or_none(p):
    try:
        return os.lstat(p)
    except FileNotFoundError:
        return None


def temp_beside(target, tag):
    d, base = os.path.split(os.fsencode(target))
    # Hidden, unique, and short enough for NAME_MAX whatever the target's name.
    return os.path.join(d, b'.' + base[:150] + b'.esbx-' + tag + b'-' + os.urandom(6).hex().encode() + b'.tmp')


def fsync_dir(d):
    fd = os.open(d or '.', os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)


def force_rmtree(p):
    # Our own staging tree: directories an archive made read-only are opened up first.
    st = lstat_or_none(p)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        os.chmod(p, 0o700)
        for name in os.listdir(p):
            force_rmtree(os.path.join(p, name))
        os.rmdir(p)
    else:
        os.unlink(p)


def op_stat(a):
    p = a['path']
    try:
        st = os.lstat(p)
    except OSError as e:
        raise oserr(e, p)
    return {'entry': entry(p, os.path.basename(p.rstrip('/')) or '/', st)}


def open_regular(p):
    try:
        # Non-blocking: a FIFO must not hang the call; it is refused below.
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise oserr(e, p)
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        os.close(fd)
        raise Fail('is_a_directory', p, 'is a directory')
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise Fail('not_a_file', p, 'is not a regular file (a device, FIFO or socket)')
    return fd, st


def op_read(a):
    p, limit = a['path'], a.get('max_bytes')
    fd, st = open_regular(p)
    if limit is not None and st.st_size > limit:
        raise Fail('too_large', p, 'is %d bytes' % st.st_size)
    h, n = hashlib.sha256(), 0
    try:
        while True:
            try:
                chunk = os.read(fd, CHUNK)
            except OSError as e:
                raise oserr(e, p)
            if not chunk:
                break
            n += len(chunk)
            if limit is not None and n > limit:
                raise Fail('too_large', p, 'grew past %d bytes while being read' % limit)
            h.update(chunk)
            write_all(1, chunk)
    finally:
        os.close(fd)
    return {'size': n, 'sha256': h.hexdigest(), 'mode': mode_of(st.st_mode), 'mtime_ms': st.st_mtime_ns // 1000000}


def receive(fd, size, p):
    # Exactly 'size' bytes from stdin: a stream cut short is never taken for the whole file.
    h, n = hashlib.sha256(), 0
    while True:
        chunk = os.read(0, CHUNK)
        if not chunk:
            break
        n += len(chunk)
        if n > size:
            raise Fail('incomplete', p, 'received more than the %d bytes announced' % size)
        h.update(chunk)
        try:
            write_all(fd, chunk)
        except OSError as e:
            raise oserr(e, p)
    if n != size:
        raise Fail('incomplete', p, 'received %d of %d bytes' % (n, size))
    return h.hexdigest()


def check_sum(a, digest, p):
    if a.get('sha256') and digest != a['sha256']:
        raise Fail('checksum_mismatch', p, 'the bytes have sha256 %s, not the %s given; nothing was written' % (digest, a['sha256']))


def op_write(a):
    p = a['path']
    # Resolved as the sandbox resolves it: a link is written through, like a shell redirection would.
    target = os.path.realpath(p)
    parent = os.path.dirname(target)
    try:
        if a.get('mkdirs'):
            os.makedirs(parent, 0o755, exist_ok=True)
        st = os.stat(target) if os.path.lexists(target) else None
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise oserr(e, p)
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise Fail('is_a_directory', p, 'is a directory')
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise Fail('not_a_file', p, 'is not a regular file (a device, FIFO or socket)')
    mode = a.get('mode')
    if mode is None:
        mode = stat.S_IMODE(st.st_mode) if st is not None else 0o644
    tmp = temp_beside(target, b'write')
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        # Named as the caller named it: the temporary file beside it is ours.
        where = p if target == p else '%s (%s)' % (p, target)
        raise Fail(CODES.get(e.errno, 'failed'), p, 'cannot create a file in the directory of %s: %s' % (where, e.strerror))
    try:
        digest = receive(fd, a['size'], p)
        check_sum(a, digest, p)
        os.fchmod(fd, mode)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(tmp, target)
    except BaseException as e:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise oserr(e, p)
        raise
    fsync_dir(parent)
    return {'path': p, 'size': a['size'], 'sha256': digest, 'mode': '%04o' % mode}


def conflicts(src, dst):
    # Where the archive has a non-directory and the target a directory: refused before anything moves.
    for name in os.listdir(src):
        s, t = os.path.join(src, name), os.path.join(dst, name)
        ss, ts = os.lstat(s), lstat_or_none(t)
        if ts is None or not stat.S_ISDIR(ts.st_mode):
            continue
        if not stat.S_ISDIR(ss.st_mode):
            return t
        found = conflicts(s, t)
        if found:
            return found
    return None


def merge(src, dst):
    st = os.lstat(src)
    os.chmod(src, 0o700)
    for name in os.listdir(src):
        s, t = os.path.join(src, name), os.path.join(dst, name)
        ss, ts = os.lstat(s), lstat_or_none(t)
        if ts is not None and stat.S_ISDIR(ss.st_mode) and stat.S_ISDIR(ts.st_mode):
            merge(s, t)
            os.chmod(t, stat.S_IMODE(ss.st_mode))
            os.utime(t, ns=(ss.st_atime_ns, ss.st_mtime_ns), follow_symlinks=False)
            os.rmdir(s)
            continue
        if ts is not None and stat.S_ISDIR(ss.st_mode):
            os.unlink(t)
        os.rename(s, t)
    os.chmod(src, stat.S_IMODE(st.st_mode))


def count_entries(d):
    n = 0
    for _, dirs, files in os.walk(d):
        n += len(dirs) + len(files)
    return n


def op_extract(a):
    import subprocess
    p = a['path']
    target = os.fsencode(os.path.realpath(p))
    try:
        st = lstat_or_none(target)
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise Fail('not_a_directory', p, 'is not a directory; an archive unpacks into a directory')
        parent = os.path.dirname(target)
        os.makedirs(parent, 0o755, exist_ok=True)
        staging = temp_beside(target, b'extract')
        os.mkdir(staging, 0o755)
    except OSError as e:
        raise oserr(e, p)
    try:
        argv = [b'/usr/bin/tar', b'--extract', b'--file=-', b'--directory=' + staging, b'--no-same-owner',
                b'--preserve-permissions', b'--delay-directory-restore']
        if a['extract'] == 'tar.gz':
            argv.append(b'--gzip')
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, close_fds=True,
                                env={'LC_ALL': 'C', 'PATH': '/usr/bin:/bin'})
        h, n, tar_gone = hashlib.sha256(), 0, False
        while True:
            chunk = os.read(0, CHUNK)
            if not chunk:
                break
            n += len(chunk)
            h.update(chunk)
            if not tar_gone:
                try:
                    proc.stdin.write(chunk)
                except BrokenPipeError:
                    tar_gone = True
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
        rc = proc.wait()
        if n != a['size']:
            raise Fail('incomplete', p, 'received %d of %d bytes' % (n, a['size']))
        digest = h.hexdigest()
        check_sum(a, digest, p)
        if rc != 0:
            raise Fail('extract_failed', p, 'tar exited %d' % rc)
        entries = count_entries(staging)
        if st is None:
            os.rename(staging, target)
        else:
            clash = conflicts(staging, target)
            if clash:
                raise Fail('is_a_directory', show(clash), 'is a directory, and the archive has a file there; nothing was extracted')
            # The existing directory keeps its own mode; what is inside takes the archive's.
            merge(staging, target)
            force_rmtree(staging)
    except BaseException as e:
        try:
            force_rmtree(staging)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise oserr(e, p)
        raise
    fsync_dir(parent)
    return {'path': p, 'size': n, 'sha256': digest, 'entries': entries}


def op_archive(a):
    import subprocess
    p = a['path']
    try:
        st = os.stat(p)
    except OSError as e:
        raise oserr(e, p)
    if not stat.S_ISDIR(st.st_mode):
        raise Fail('not_a_directory', p, 'is not a directory; download a file without archive')
    try:
        os.listdir(p)
    except OSError as e:
        raise oserr(e, p)
    rc = subprocess.call([b'/usr/bin/tar', b'--create', b'--gzip', b'--file=-', b'--directory=' + os.fsencode(p), b'--', b'.'],
                         stdin=subprocess.DEVNULL, close_fds=True, env={'LC_ALL': 'C', 'PATH': '/usr/bin:/bin'})
    if rc not in (0, 1, 2):
        raise Fail('failed', p, 'tar exited %d' % rc)
    return {'tar_exit': rc}


def op_list(a):
    root = a['path']
    try:
        st = os.stat(root)
    except OSError as e:
        raise oserr(e, root)
    if not stat.S_ISDIR(st.st_mode):
        raise Fail('not_a_directory', root, 'is not a directory')
    recursive, limit, budget = a['recursive'], a['limit'], a['page_bytes']
    after = [os.fsencode(c) for c in a['after']] if a.get('after') else None
    base = os.fsencode(root.rstrip('/') or '/')
    out, state = [], {'bytes': 0, 'more': None, 'skipped': []}

    class Full(Exception):
        pass

    def walk(d, parts):
        try:
            names = sorted(os.listdir(d))
        except OSError as e:
            if not parts:
                raise oserr(e, root)
            state['skipped'].append({'path': show(d), 'code': CODES.get(e.errno, 'failed')})
            return
        for name in names:
            comps = parts + [name]
            child = os.path.join(d, name)
            st = lstat_or_none(child)
            if st is None:
                continue
            if after is not None and comps <= after:
                # Listed on an earlier page; its subtree may still hold the cursor.
                if recursive and stat.S_ISDIR(st.st_mode) and after[:len(comps)] == comps:
                    walk(child, comps)
                continue
            e = entry(child, name, st)
            size = len(json.dumps(e))
            if len(out) >= limit or state['bytes'] + size > budget:
                state['more'] = [show(c) for c in parts_of_last()]
                raise Full()
            out.append((comps, e))
            state['bytes'] += size + 1
            if recursive and stat.S_ISDIR(st.st_mode):
                walk(child, comps)

    def parts_of_last():
        return out[-1][0]

    try:
        walk(base if base != b'' else b'/', [])
    except Full:
        pass
    result = {'entries': [e for _, e in out], 'skipped': state['skipped'][:100]}
    if state['more'] is not None:
        result['after'] = state['more']
    write_all(1, json.dumps(result, ensure_ascii=True).encode())
    return {'count': len(out)}


def op_mkdir(a):
    p = a['path']
    try:
        if a.get('parents'):
            os.makedirs(p, 0o755, exist_ok=True)
        else:
            os.mkdir(p, 0o755)
    except FileExistsError as e:
        st = os.stat(p) if os.path.exists(p) else None
        what = 'already exists' if st is not None and stat.S_ISDIR(st.st_mode) else 'exists and is not a directory'
        raise Fail('exists', p, what)
    except OSError as e:
        raise oserr(e, p)
    return {'entry': entry(p, os.path.basename(p.rstrip('/')), os.lstat(p))}


def op_delete(a):
    import shutil
    p = a['path']
    try:
        st = os.lstat(p)
        if stat.S_ISDIR(st.st_mode):
            if a.get('recursive'):
                failed = []
                # rmtree never follows links and works on open directories: a swap mid-way cannot turn it elsewhere.
                shutil.rmtree(p, onerror=lambda fn, path, info: failed.append((path, info[1])))
                if failed:
                    path, err = failed[0]
                    raise oserr(err, path) if isinstance(err, OSError) else Fail('failed', show(path), str(err))
            else:
                try:
                    os.rmdir(p)
                except OSError as e:
                    if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                        raise Fail('is_a_directory', p, 'is a directory that is not empty; pass recursive=true to delete it with everything in it')
                    raise
        else:
            os.unlink(p)
    except OSError as e:
        raise oserr(e, p)
    return {'path': p, 'type': kind(st.st_mode)}


def rename_noreplace(src, dst):
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, 'renameat2', None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        if fn(-100, os.fsencode(src), -100, os.fsencode(dst), 1) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(err, os.strerror(err), dst if err == errno.EEXIST else src)
    # The file system cannot refuse to replace in one step: check, then rename.
    if os.path.lexists(dst):
        raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), dst)
    os.rename(src, dst)


def copy_across(src, dst, overwrite):
    import shutil
    tmp = temp_beside(dst, b'move')
    if os.path.isdir(src) and not os.path.islink(src):
        shutil.copytree(src, tmp, symlinks=True)
    else:
        shutil.copy2(src, tmp, follow_symlinks=False)
    try:
        if overwrite:
            os.rename(tmp, dst)
        else:
            rename_noreplace(tmp, dst)
    except BaseException:
        force_rmtree(tmp)
        raise
    if os.path.isdir(src) and not os.path.islink(src):
        shutil.rmtree(src)
    else:
        os.unlink(src)


def op_move(a):
    src, dst, overwrite = a['from'], a['to'], a.get('overwrite', False)
    try:
        os.lstat(src)
    except OSError as e:
        raise oserr(e, src)
    try:
        try:
            if overwrite:
                os.rename(src, dst)
            else:
                rename_noreplace(src, dst)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            copy_across(src, dst, overwrite)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise Fail('exists', dst, 'already exists' if not overwrite else 'is a directory that is not empty')
        if e.errno == errno.EISDIR:
            raise Fail('is_a_directory', dst, 'is a directory; a file cannot replace it')
        if e.errno == errno.ENOTDIR:
            raise Fail('not_a_directory', show(e.filename) if e.filename else dst, 'is not a directory')
        if e.errno == errno.EINVAL:
            raise Fail('invalid_path', dst, 'cannot move a directory into itself')
        raise oserr(e, src)
    return {'from': src, 'to': dst, 'entry': entry(dst, os.path.basename(dst.rstrip('/')), os.lstat(dst))}


OPS = {'stat': op_stat, 'read': op_read, 'write': op_write, 'extract': op_extract, 'archive': op_archive,
       'list': op_list, 'mkdir': op_mkdir, 'delete': op_delete, 'move': op_move}


def main():
    os.umask(0o022)
    op, args = sys.argv[2], json.loads(sys.argv[3])
    try:
        emit({'ok': OPS[op](args)}, 0)
    except Fail as f:
        emit({'error': {'code': f.code, 'path': show(f.path), 'message': f.message}}, 1)
    except OSError as e:
        f = oserr(e, args.get('path'))
        emit({'error': {'code': f.code, 'path': f.path, 'message': f.message}}, 1)
    except Exception as e:
        emit({'error': {'code': 'failed', 'path': args.get('path') or args.get('from'), 'message': '%s: %s' % (type(e).__name__, e)}}, 1)


main()
`;

/** The argv of one tool run (a docker exec Cmd: no shell). */
export function sandboxFilesArgv(nonce: string, op: string, args: unknown): string[] {
  return ['/usr/bin/python3', '-I', '-S', '-X', 'utf8', '-c', sandboxFilesProgram, nonce, op, JSON.stringify(args)];
}
