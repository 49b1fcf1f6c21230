"""Starts an OptiRoute gateway binary on a free loopback port for end-to-end tests."""

import os
import subprocess
import sys
import threading


class Gateway:
    def __init__(self, *args, env=None):
        binary = os.environ.get("OPTIROUTE_BIN", "target/debug/optiroute")
        full_env = dict(os.environ)
        # Demo mode: no provider keys may leak in from the caller's environment.
        for k in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "HF_TOKEN", "OLLAMA_HOST", "OPTIROUTE_LOCAL_URL"):
            full_env.pop(k, None)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [binary, "serve", "--host", "127.0.0.1", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
        )
        self.stderr_lines = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self.url = None
        # Readiness: the gateway prints this line once it is listening.
        for line in self.proc.stdout:
            if line.startswith("OPTIROUTE_LISTENING "):
                self.url = line.split()[1]
                break
        if self.url is None:
            self.proc.kill()
            raise RuntimeError("gateway did not start:\n" + "".join(self.stderr_lines))

    def _drain_stderr(self):
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    def stop(self):
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


if __name__ == "__main__":
    with Gateway() as g:
        print(g.url)
        sys.stdout.flush()
