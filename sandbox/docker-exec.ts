import { Writable } from 'node:stream';
import type Docker from 'dockerode';
import { CappedBuffer } from './agent/protocol.js';
import type { AgentExecRequest, AgentExecResult } from './agent/client.js';
import { SANDBOX_USER } from './container.js';

/**
 * The fallback exec path: `docker exec` through the Engine API (no agent). Same caps (the demuxed
 * streams are counted and dropped past the cap as they arrive), same environment, same working
 * directory. The timeout is enforced inside the sandbox by coreutils `timeout -s KILL` (which signals
 * the whole process group) and by a host deadline; the outcome is `timed_out` when the command died of
 * SIGKILL at or after its deadline. Exit codes above 128 are reported as `exited` (docker exec does not
 * say whether a signal or the program produced them); `oom` when the sandbox itself was OOM-killed.
 */
export async function dockerExec(
  docker: Docker,
  containerId: string,
  req: AgentExecRequest,
  opts: { maxOutputBytes: number; graceMs?: number },
): Promise<AgentExecResult & { sandboxGone: boolean }> {
  const container = docker.getContainer(containerId);
  const secs = Math.max(0.001, req.timeoutMs / 1000);
  const hasStdin = req.stdin !== undefined;
  const exec = await container.exec({
    Cmd: ['timeout', '-s', 'KILL', `${secs}s`, ...req.argv],
    AttachStdin: hasStdin,
    AttachStdout: true,
    AttachStderr: true,
    Tty: false,
    Env: Object.entries(req.env).map(([k, v]) => `${k}=${v}`),
    WorkingDir: req.cwd,
    User: SANDBOX_USER,
    Privileged: false,
  });
  const started = performance.now();
  const stream = (await exec.start({ hijack: true, stdin: hasStdin, Detach: false, Tty: false })) as NodeJS.ReadWriteStream & { destroy(): void };
  const out = new CappedBuffer(opts.maxOutputBytes);
  const err = new CappedBuffer(opts.maxOutputBytes);
  const sink = (b: CappedBuffer): Writable =>
    new Writable({
      write(chunk: Buffer, _enc, cb) {
        b.push(chunk);
        cb();
      },
    });
  docker.modem.demuxStream(stream, sink(out), sink(err));
  let hostDeadlineHit = false;
  await new Promise<void>((resolve) => {
    const timer = setTimeout(() => {
      hostDeadlineHit = true;
      stream.destroy();
      resolve();
    }, req.timeoutMs + (opts.graceMs ?? 5_000));
    // A sandbox that dies under an exec (OOM-killed as a whole) can leave the exec stream open.
    const watch = setInterval(() => {
      container.inspect().then(
        (ci) => {
          if (!ci.State.Running) {
            stream.destroy();
            done();
          }
        },
        () => {
          stream.destroy();
          done();
        },
      );
    }, 500);
    const done = (): void => {
      clearTimeout(timer);
      clearInterval(watch);
      resolve();
    };
    stream.on('end', done);
    stream.on('close', done);
    stream.on('error', done);
    if (hasStdin) {
      stream.write(req.stdin as Buffer);
      stream.end();
    }
  });
  const durationMs = Math.round(performance.now() - started);
  let exitCode: number | null = null;
  try {
    const info = await exec.inspect();
    exitCode = info.Running ? null : info.ExitCode;
  } catch {
    exitCode = null;
  }
  let sandboxGone = false;
  let oomKilled = false;
  try {
    const ci = await container.inspect();
    sandboxGone = !ci.State.Running;
    oomKilled = ci.State.OOMKilled === true;
  } catch {
    sandboxGone = true;
  }
  let outcome: AgentExecResult['outcome'] = 'exited';
  if (oomKilled) outcome = 'oom';
  else if (hostDeadlineHit || (exitCode === 137 && durationMs >= req.timeoutMs)) outcome = 'timed_out';
  else if (exitCode === null || sandboxGone) outcome = 'killed';
  return {
    outcome,
    exitCode: outcome === 'exited' ? exitCode : null,
    signal: null,
    stdout: out.toBuffer(),
    stderr: err.toBuffer(),
    stdoutDropped: out.dropped,
    stderrDropped: err.dropped,
    durationMs,
    sandboxGone,
  };
}
