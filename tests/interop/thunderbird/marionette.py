"""A minimal Marionette client (protocol level 3): length-prefixed JSON over TCP.

Messages are `<decimal length>:<json>`. The server greets with {"marionetteProtocol": 3, ...}; a command is
[0, id, name, params] and its answer [1, id, error, result]. Only what thunderbird.sh needs is here:
new session, chrome context, timeouts, async script execution and quit (via command()). No third-party packages.
"""
import json
import socket
import time


class MarionetteError(Exception):
    pass


class Marionette:
    def __init__(self, host, port, connect_timeout=60.0):
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                self.sock = socket.create_connection((host, port), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.sock.settimeout(None)
        self.buf = b""
        self.next_id = 1
        hello = self._read()
        if hello.get("marionetteProtocol") != 3:
            raise MarionetteError(f"unexpected greeting {hello!r}")

    def _read(self):
        while b":" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b":")
        length = int(head)
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return json.loads(body)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise MarionetteError("connection closed by Thunderbird")
        self.buf += chunk

    def command(self, name, params=None):
        msg_id = self.next_id
        self.next_id += 1
        data = json.dumps([0, msg_id, name, params or {}]).encode()
        self.sock.sendall(str(len(data)).encode() + b":" + data)
        while True:
            msg = self._read()
            if isinstance(msg, list) and len(msg) == 4 and msg[0] == 1 and msg[1] == msg_id:
                if msg[2]:
                    err = msg[2]
                    raise MarionetteError(f"{name}: {err.get('error')}: {err.get('message')}\n{err.get('stacktrace', '')}")
                return msg[3]

    def start_session(self, script_timeout_ms):
        self.command("WebDriver:NewSession", {"capabilities": {"alwaysMatch": {}}})
        self.command("Marionette:SetContext", {"value": "chrome"})
        self.command("WebDriver:SetTimeouts", {"script": script_timeout_ms})

    def run_async(self, script, args=()):
        """Runs `script` in chrome context; it must call `resolve(value)` (the last argument). Returns value."""
        res = self.command("WebDriver:ExecuteAsyncScript", {"script": script, "args": list(args)})
        return res.get("value") if isinstance(res, dict) else res

    def close(self):
        self.sock.close()
