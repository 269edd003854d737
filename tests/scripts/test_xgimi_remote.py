"""Tests for scripts/xgimi_remote.py against loopback fakes (127.0.0.1 only).

The fakes model reference/projector.md: a projector with UDP key (16735) and
advance (16750) listeners on ephemeral ports, a TCP liveness port that accepts
connections only while the projector is ON, and the power state machine
UNPOWERED -> ON (AC restored, "power on with AC") / ON -> STANDBY (power key);
and an HTTP smart plug (Shelly-style ``/relay/0?turn=on``) that records the
off/on sequence and switches the fake projector's AC. Every wait is shortened
through the configuration, so the file runs in a few seconds.
"""

import ast
import base64
import errno
import importlib.util
import io
import json
import os
import pathlib
import re
import select
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "xgimi_remote.py"
LOOPBACK = "127.0.0.1"
TOKEN = "test-token-0123456789abcdef"
SYNC = b"__SYNC__"


def _load_script():
    """Import scripts/xgimi_remote.py (not a package) as module `xgimi_remote`."""
    spec = importlib.util.spec_from_file_location("xgimi_remote", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    return module


xr = _load_script()

# Golden bytes, written out from the key tables of reference/projector.md §2.1.
GOLDEN_KEYS = {
    "ok": b"KEYPRESSES:49",
    "back": b"KEYPRESSES:48",
    "home": b"KEYPRESSES:35",
    "menu": b"KEYPRESSES:139",
    "up": b"KEYPRESSES:36",
    "down": b"KEYPRESSES:38",
    "left": b"KEYPRESSES:50",
    "right": b"KEYPRESSES:37",
    "volume_down": b"KEYPRESSES:114",
    "volume_up": b"KEYPRESSES:115",
    "mute": b"KEYPRESSES:113",
    "power": b"KEYPRESSES:116",
    "poweroff": b"KEYPRESSES:30",
    "autofocus": b"KEYPRESSES:2099",
    "autofocus_new": b"KEYPRESSES:2103",
    "manual_focus_left": b"KEYPRESSES:2097",
    "manual_focus_right": b"KEYPRESSES:2098",
    "motor_left_start": b"KEYPRESSES:2092",
    "motor_right_start": b"KEYPRESSES:2093",
    "motor_left_overstep": b"KEYPRESSES:2095",
    "motor_right_overstep": b"KEYPRESSES:2096",
    "motor_stop": b"KEYPRESSES:2101",
    "shortcut_setting": b"KEYPRESSES:2094",
    "choose_source": b"KEYPRESSES:2102",
    "hibernate": b"KEYPRESSES:2106",
    "xmusic": b"KEYPRESSES:2108",
}
MODEL_DEPENDENT = [
    "autofocus",
    "autofocus_new",
    "manual_focus_left",
    "manual_focus_right",
    "motor_left_start",
    "motor_right_start",
    "motor_left_overstep",
    "motor_right_overstep",
    "motor_stop",
    "shortcut_setting",
    "choose_source",
    "hibernate",
    "xmusic",
]
# reference/projector.md §2.2, verbatim with the command name in place of <cmd>.
ADVANCE_TEMPLATE = (
    "{'action': 20000, 'controlCmd': {'data': '%s', 'delayTime': 0, 'mode': 5, "
    "'time': 0, 'type': 0}, 'msgid': '2'}"
)


# --------------------------------------------------------------------------
# Fakes
# --------------------------------------------------------------------------


def _udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    return sock


def _tcp_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, port))
    return sock


def _closed_port(kind: int) -> int:
    """A loopback port with nothing bound to it (bound, then released)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


class FakeProjector:
    """A projector on loopback: UDP listeners, TCP liveness port, power states.

    States follow reference §3: UNPOWERED (no AC), STANDBY, BOOTING, ON. The TCP
    status socket stays bound (so the port is reserved) and listens only while
    ON; a bound, non-listening socket answers connects with a reset, which is
    what a closed port on a live host does. Datagrams are processed only while
    ON (a projector in standby has no network); `drop_first` simulates UDP loss.
    """

    def __init__(
        self,
        *,
        state: str = "ON",
        auto_boot_on_ac: bool = True,
        boot_delay_s: float = 0.0,
        opens_status_port: bool = True,
        drop_first: int = 0,
    ):
        self.auto_boot_on_ac = auto_boot_on_ac
        self.boot_delay_s = boot_delay_s
        self.opens_status_port = opens_status_port
        self.drop_first = drop_first
        self.received: list[tuple[str, bytes]] = []
        self.dropped: list[tuple[str, bytes]] = []
        self.ignored: list[tuple[str, bytes]] = []
        self.transitions: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._timer = None
        self._synced = 0
        self._socks = {"key": _udp_socket(), "advance": _udp_socket()}
        self.key_port = self._socks["key"].getsockname()[1]
        self.advance_port = self._socks["advance"].getsockname()[1]
        self._tcp = _tcp_socket(0)
        self.status_port = self._tcp.getsockname()[1]
        self._listening = False
        self.state = None
        with self._cond:
            self._set_state(state)
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    # State machine --------------------------------------------------------

    def ac_off(self) -> None:
        """The smart plug cut the power."""
        with self._cond:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self.state != "UNPOWERED":
                self._set_state("UNPOWERED")

    def ac_on(self) -> None:
        """The smart plug restored the power."""
        with self._cond:
            if self.state != "UNPOWERED":
                return
            if not self.auto_boot_on_ac:
                self._set_state("STANDBY")
            elif self.boot_delay_s <= 0:
                self._set_state("ON")
            else:
                self._set_state("BOOTING")
                self._timer = threading.Timer(self.boot_delay_s, self._booted)
                self._timer.daemon = True
                self._timer.start()

    def states(self) -> list[str]:
        """The sequence of states so far."""
        with self._cond:
            return [state for _, state in self.transitions]

    def _booted(self) -> None:
        with self._cond:
            if self.state == "BOOTING":
                self._set_state("ON")

    def _set_state(self, state: str) -> None:
        self.state = state
        self.transitions.append((time.monotonic(), state))
        listen = state == "ON" and self.opens_status_port
        if listen and not self._listening:
            self._tcp.listen(64)
            self._listening = True
        elif not listen and self._listening:
            self._tcp.close()
            self._tcp = _tcp_socket(self.status_port)
            self._listening = False
        self._cond.notify_all()

    # Network --------------------------------------------------------------

    def _serve(self) -> None:
        names = {sock: name for name, sock in self._socks.items()}
        while not self._stop.is_set():
            ready, _, _ = select.select([*names, self._wake_r], [], [], 1.0)
            for sock in ready:
                if sock is self._wake_r:
                    return
                payload, _ = sock.recvfrom(65536)
                self._on_datagram(names[sock], payload)

    def _on_datagram(self, port: str, payload: bytes) -> None:
        with self._cond:
            if payload == SYNC:
                self._synced += 1
            elif self.state != "ON":
                self.ignored.append((port, payload))
            elif self.drop_first > 0:
                self.drop_first -= 1
                self.dropped.append((port, payload))
            else:
                self.received.append((port, payload))
                if port == "key" and payload in (b"KEYPRESSES:116", b"KEYPRESSES:30"):
                    self._set_state("STANDBY")
            self._cond.notify_all()

    def sync(self) -> None:
        """Return once every datagram sent before this call has been processed."""
        with self._cond:
            target = self._synced + 2
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for port in (self.key_port, self.advance_port):
                sock.sendto(SYNC, (LOOPBACK, port))
        with self._cond:
            assert self._cond.wait_for(lambda: self._synced >= target, 5.0)

    def payloads(self, port: str = "key") -> list[bytes]:
        """Processed datagrams on `port`, after a sync."""
        self.sync()
        with self._cond:
            return [payload for name, payload in self.received if name == port]

    def close(self) -> None:
        self._stop.set()
        self._wake_w.send(b"x")
        self._thread.join(5)
        with self._cond:
            if self._timer is not None:
                self._timer.cancel()
        for sock in (*self._socks.values(), self._wake_r, self._wake_w, self._tcp):
            sock.close()


class FakePlug:
    """An HTTP smart plug (Shelly-style URLs) wired to a FakeProjector's AC.

    Records (time, action, method, Authorization header) per request. `fail`
    lists actions answered with HTTP 500; `fail_first` fails the first requests;
    `delay_s` delays every answer (for client timeouts).
    """

    def __init__(
        self,
        projector: FakeProjector | None = None,
        *,
        delay_s: float = 0.0,
        fail: tuple[str, ...] = (),
        fail_first: int = 0,
    ):
        self.projector = projector
        self.delay_s = delay_s
        self.fail = fail
        self.fail_first = fail_first
        self.events: list[tuple[float, str, str, str | None]] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                fake._handle(self, "GET")

            def do_POST(self):  # noqa: N802
                fake._handle(self, "POST")

            def do_PUT(self):  # noqa: N802
                fake._handle(self, "PUT")

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}
        )
        self._thread.start()

    def url(self, action: str, userinfo: str = "") -> str:
        return f"http://{userinfo}{LOOPBACK}:{self.port}/relay/0?turn={action}"

    @property
    def on_url(self) -> str:
        return self.url("on")

    @property
    def off_url(self) -> str:
        return self.url("off")

    def actions(self) -> list[str]:
        with self._lock:
            return [action for _, action, _, _ in self.events]

    def _handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        if length:
            request.rfile.read(length)
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query)
        action = query.get("turn", [""])[0]
        with self._lock:
            auth = request.headers.get("Authorization")
            self.events.append((time.monotonic(), action, method, auth))
            failing = action in self.fail or self.fail_first > 0
            self.fail_first = max(0, self.fail_first - 1)
        if self.delay_s:
            time.sleep(self.delay_s)
        if failing:
            request.send_error(500, "relay fault")
            return
        if self.projector is not None and action in ("on", "off"):
            if action == "on":
                self.projector.ac_on()
            else:
                self.projector.ac_off()
        body = json.dumps({"ison": action == "on"}).encode()
        request.send_response(200)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


# --------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """No user configuration, token or proxy leaks into a test."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(xr.TOKEN_ENV, raising=False)
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def make_projector():
    made = []

    def make(**kwargs) -> FakeProjector:
        made.append(FakeProjector(**kwargs))
        return made[-1]

    yield make
    for fake in made:
        fake.close()


@pytest.fixture
def make_plug():
    made = []

    def make(projector=None, **kwargs) -> FakePlug:
        made.append(FakePlug(projector, **kwargs))
        return made[-1]

    yield make
    for fake in made:
        fake.close()


@pytest.fixture
def fake(make_projector) -> FakeProjector:
    return make_projector()


@pytest.fixture
def make_server():
    started = []

    def start(remote, token=TOKEN):
        server = xr.SceneServer(remote, token, LOOPBACK, 0, log=io.StringIO())
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.01}
        )
        thread.start()
        started.append((server, thread))
        return server

    yield start
    for server, thread in started:
        server.shutdown()
        server.server_close()
        thread.join(5)


def projector_config(fake: FakeProjector, **overrides) -> "xr.ProjectorConfig":
    values = dict(
        host=LOOPBACK,
        key_port=fake.key_port,
        advance_port=fake.advance_port,
        status_port=fake.status_port,
        status_timeout_s=1.0,
        status_port_opens=fake.opens_status_port,
        udp_retries=1,
        udp_retry_interval_s=0.01,
        udp_check_s=0.01,
    )
    values.update(overrides)
    return xr.ProjectorConfig(**values)


def make_config(
    fake: FakeProjector,
    plug: FakePlug | None = None,
    *,
    plug_config: "xr.PlugConfig | None" = None,
    scenes: "xr.ScenesConfig | None" = None,
    **timings,
) -> "xr.Config":
    if plug_config is None and plug is not None:
        plug_config = xr.PlugConfig(
            backend="http",
            on_url=plug.on_url,
            off_url=plug.off_url,
            timeout_s=2.0,
            retries=0,
        )
    values = dict(
        plug_off_wait_s=0.1,
        boot_timeout_s=2.0,
        off_timeout_s=1.0,
        poll_interval_s=0.02,
        key_interval_s=0.0,
    )
    values.update(timings)
    return xr.Config(
        projector=projector_config(fake),
        plug=plug_config or xr.PlugConfig(),
        timings=xr.TimingConfig(**values),
        scenes=scenes or xr.ScenesConfig(),
    )


def make_remote(config, **kwargs) -> "xr.Remote":
    kwargs.setdefault("out", io.StringIO())
    return xr.Remote(config, **kwargs)


def client(fake: FakeProjector, **overrides) -> "xr.Projector":
    return xr.Projector.from_config(projector_config(fake, **overrides))


def write_config(tmp_path: pathlib.Path, fake: FakeProjector, extra: str = "") -> str:
    path = tmp_path / "xgimi-remote.toml"
    path.write_text(
        f"""
[projector]
host = "{LOOPBACK}"
key_port = {fake.key_port}
advance_port = {fake.advance_port}
status_port = {fake.status_port}
status_timeout_s = 1.0
status_port_opens = {str(fake.opens_status_port).lower()}
udp_check_s = 0.01
udp_retry_interval_s = 0.01

[timings]
plug_off_wait_s = 0.05
boot_timeout_s = 2.0
off_timeout_s = 1.0
poll_interval_s = 0.02
key_interval_s = 0.0
"""
        + extra
    )
    return str(path)


def http_call(url, method="POST", headers=None):
    """(status, JSON body) of one request; no proxy."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    data = b"" if method in ("POST", "PUT") else None
    request = urllib.request.Request(url, data=data, method=method)
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with opener.open(request, timeout=5) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read() or b"null")


def bearer(token=TOKEN) -> dict:
    return {"Authorization": f"Bearer {token}"}


def one_line_error(err: str) -> str:
    """Assert `err` is exactly one line with no traceback, and return it."""
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, err
    return err


# --------------------------------------------------------------------------
# Protocol: golden bytes, key names, advance commands
# --------------------------------------------------------------------------


def test_tables_cover_the_reference():
    assert set(xr.ALL_KEY_CODES) == set(GOLDEN_KEYS)
    assert list(xr.MODEL_KEY_CODES) == MODEL_DEPENDENT


@pytest.mark.parametrize("name", sorted(GOLDEN_KEYS))
def test_key_golden_bytes_on_udp_key_port(fake, name):
    projector = client(fake)
    assert projector.key(name) == GOLDEN_KEYS[name]
    assert fake.payloads("key") == [GOLDEN_KEYS[name]]
    assert fake.payloads("advance") == []


@pytest.mark.parametrize(
    "alias, code",
    [
        ("play", b"49"),
        ("pause", b"49"),
        ("Play-Pause", b"49"),
        ("OK", b"49"),
        ("vol+", b"115"),
        ("Volume-Up", b"115"),
        ("volume down", b"114"),
        ("vol-", b"114"),
        ("volumemute", b"113"),
        ("power-off", b"30"),
        ("source", b"2102"),
        ("focus", b"2099"),
    ],
)
def test_key_aliases_and_spelling(alias, code):
    assert xr.key_payload(alias) == b"KEYPRESSES:" + code


def test_advance_golden_bytes_autofocus(fake):
    expected = (
        b"{'action': 20000, 'controlCmd': {'data': 'autofocus', 'delayTime': 0, "
        b"'mode': 5, 'time': 0, 'type': 0}, 'msgid': '2'}"
    )
    assert client(fake).advance("autofocus") == expected
    assert fake.payloads("advance") == [expected]
    assert fake.payloads("key") == []
    with pytest.raises(json.JSONDecodeError):  # single quotes: not JSON
        json.loads(expected)
    assert ast.literal_eval(expected.decode())["controlCmd"]["data"] == "autofocus"


@pytest.mark.parametrize("name", MODEL_DEPENDENT)
def test_advance_golden_bytes_every_command(fake, name):
    expected = (ADVANCE_TEMPLATE % name).encode("ascii")
    assert client(fake).advance(name) == expected
    assert fake.payloads("advance") == [expected]


def test_unknown_key_lists_valid_names_and_sends_nothing(fake):
    with pytest.raises(xr.UsageError) as info:
        client(fake).key("self-destruct")
    message = str(info.value)
    assert "unknown key 'self-destruct'" in message
    for name in GOLDEN_KEYS:
        assert name in message
    assert isinstance(info.value, ValueError)
    assert fake.payloads("key") == []


@pytest.mark.parametrize(
    "name, reason",
    [("voice", "microphone"), ("power-on", "standby"), ("on", "'on' scene")],
)
def test_keys_without_lan_code_fail_explicitly(fake, name, reason):
    with pytest.raises(xr.UsageError, match=reason):
        client(fake).key(name)
    assert fake.payloads("key") == []


def test_unknown_advance_command_lists_valid_ones(fake):
    with pytest.raises(xr.UsageError) as info:
        client(fake).advance("ok")
    assert "unknown advance command 'ok'" in str(info.value)
    assert all(name in str(info.value) for name in MODEL_DEPENDENT)
    assert fake.payloads("advance") == []


# --------------------------------------------------------------------------
# Hosts, status, UDP retries
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host, match",
    [
        ("300.1.2.3", "invalid IP address"),
        ("192.168.1", "invalid IP address"),
        ("1.2.3.4.5", "invalid IP address"),
        ("fe80::zz", "invalid IP address"),
        ("0.0.0.0", "not a unicast address"),
        ("224.0.0.1", "not a unicast address"),
        ("255.255.255.255", "not a unicast address"),
        ("bad_host!", "invalid host name"),
        ("", "no projector host"),
        (None, "no projector host"),
    ],
)
def test_invalid_hosts_are_rejected_before_any_traffic(host, match):
    def resolver(*args, **kwargs):
        raise AssertionError("no DNS lookup expected")

    with pytest.raises(xr.ConfigError, match=match):
        xr.Projector(host, resolver=resolver)


def test_unresolvable_host_name_is_a_clear_error():
    def resolver(host, port, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(xr.ConfigError) as info:
        xr.Projector("projector.invalid", resolver=resolver)
    assert str(info.value) == (
        "cannot resolve projector host 'projector.invalid': Name or service not known"
    )


def test_host_name_resolves_through_the_resolver(fake):
    calls = []

    def resolver(host, port, **kwargs):
        calls.append(host)
        return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", (LOOPBACK, 0))]

    projector = xr.Projector(
        "projector.lan", key_port=fake.key_port, udp_check_s=0.01, resolver=resolver
    )
    assert calls == ["projector.lan"] and projector.address == LOOPBACK
    projector.key("home")
    assert fake.payloads() == [b"KEYPRESSES:35"]


def test_status_follows_the_tcp_liveness_port(fake):
    projector = client(fake)
    assert projector.status() == "on"
    fake.ac_off()
    assert projector.status() == "off"


def test_status_unknown_for_models_that_never_open_the_port(make_projector):
    fake = make_projector(opens_status_port=False)
    projector = client(fake)
    assert fake.state == "ON"
    assert projector.status() == "unknown"
    # A model that does answer is still reported on.
    listener = _tcp_socket(0)
    listener.listen(1)
    try:
        other = client(fake, status_port=listener.getsockname()[1])
        assert other.status_port_opens is False and other.status() == "on"
    finally:
        listener.close()


def test_status_uses_configured_port_and_timeout(monkeypatch):
    calls = []

    def create_connection(address, timeout=None):
        calls.append((address, timeout))
        raise TimeoutError("timed out")

    monkeypatch.setattr(xr.socket, "create_connection", create_connection)
    projector = xr.Projector(LOOPBACK, status_port=5554, status_timeout_s=0.25)
    assert projector.status() == "off"
    assert calls == [((LOOPBACK, 5554), 0.25)]


class _FlakySocketFactory:
    """socket.socket stand-in whose first `failures` sends raise ENOBUFS."""

    def __init__(self, failures: int):
        self.failures = failures
        self.attempts = 0

    def __call__(self, *args):
        factory = self

        class Flaky(socket.socket):
            def send(self, data, *flags):
                factory.attempts += 1
                if factory.failures > 0:
                    factory.failures -= 1
                    raise OSError(errno.ENOBUFS, "No buffer space available")
                return super().send(data, *flags)

        return Flaky(*args)


def test_udp_send_retries_after_send_errors(fake):
    sleeps, factory = [], _FlakySocketFactory(failures=2)
    projector = xr.Projector.from_config(
        projector_config(fake, udp_retries=2, udp_retry_interval_s=0.03),
        socket_factory=factory,
        sleep=sleeps.append,
    )
    projector.key("mute")
    assert factory.attempts == 3 and sleeps == [0.03, 0.03]
    assert fake.payloads() == [b"KEYPRESSES:113"]


def test_udp_send_gives_up_after_the_configured_retries(fake):
    sleeps, factory = [], _FlakySocketFactory(failures=5)
    projector = xr.Projector.from_config(
        projector_config(fake, udp_retries=1),
        socket_factory=factory,
        sleep=sleeps.append,
    )
    with pytest.raises(xr.ProjectorError, match="after 2 attempt.*No buffer space"):
        projector.key("mute")
    assert factory.attempts == 2 and len(sleeps) == 1
    assert fake.payloads() == []


def test_udp_port_unreachable_is_detected_and_retried():
    sleeps = []
    projector = xr.Projector(
        LOOPBACK,
        key_port=_closed_port(socket.SOCK_DGRAM),
        udp_retries=2,
        udp_check_s=0.5,
        sleep=sleeps.append,
    )
    with pytest.raises(xr.ProjectorError, match="after 3 attempt.*port unreachable"):
        projector.key("ok")
    assert len(sleeps) == 2


# --------------------------------------------------------------------------
# Smart plugs
# --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_http_plug_calls_the_configured_urls(make_plug, method):
    plug = make_plug()
    http_plug = xr.HttpPlug(plug.on_url, plug.off_url, method=method, timeout_s=2)
    http_plug.off()
    http_plug.on()
    assert [(a, m) for _, a, m, _ in plug.events] == [("off", method), ("on", method)]


def test_http_plug_credentials_become_basic_auth_and_stay_secret(make_plug):
    plug = make_plug()
    url = plug.url("on", userinfo="admin:s3cret@")
    xr.HttpPlug(url, url, timeout_s=2).on()
    expected = "Basic " + base64.b64encode(b"admin:s3cret").decode()
    assert plug.events[0][3] == expected
    closed = f"http://admin:s3cret@{LOOPBACK}:{_closed_port(socket.SOCK_STREAM)}/x?a=1"
    with pytest.raises(xr.PlugError) as info:
        xr.HttpPlug(closed, closed, timeout_s=2).on()
    assert "s3cret" not in str(info.value) and "admin" not in str(info.value)


def test_http_plug_unreachable():
    url = f"http://{LOOPBACK}:{_closed_port(socket.SOCK_STREAM)}/relay/0?turn=on"
    with pytest.raises(xr.PlugError, match="smart plug unreachable at http://127"):
        xr.HttpPlug(url, url, timeout_s=2).on()


def test_http_plug_timeout(make_plug):
    plug = make_plug(delay_s=0.5)
    with pytest.raises(xr.PlugError, match="timed out after 0.1 s"):
        xr.HttpPlug(plug.on_url, plug.off_url, timeout_s=0.1).on()


def test_http_plug_http_error(make_plug):
    plug = make_plug(fail=("on",))
    with pytest.raises(xr.PlugError, match="answered HTTP 500"):
        xr.HttpPlug(plug.on_url, plug.off_url, timeout_s=2).on()


@pytest.mark.parametrize(
    "on_url", [None, "ftp://plug/on", "plug.lan/on", "http://plug:port/on"]
)
def test_http_plug_needs_http_urls(on_url):
    with pytest.raises(xr.ConfigError, match="on_url"):
        xr.HttpPlug(on_url, "http://plug/off")


def test_miio_backend_without_python_miio_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "miio", None)  # makes `import miio` fail
    config = xr.PlugConfig(backend="miio", host=LOOPBACK, token="0" * 32)
    with pytest.raises(xr.ConfigError, match="pip install python-miio"):
        xr.make_plug(config)


class _FakeMiio:
    """Records the python-miio calls the Mi Home backend makes."""

    class DeviceException(Exception):
        pass

    def __init__(self, fail: bool = False):
        self.calls = []
        self.fail = fail
        miio = self

        class ChuangmiPlug:
            def __init__(self, **kwargs):
                miio.calls.append(("ChuangmiPlug", kwargs))

            def on(self):
                miio._call("on")

            def off(self):
                miio._call("off")

        class Device:
            def __init__(self, **kwargs):
                miio.calls.append(("Device", kwargs))

            def send(self, command, params):
                miio._call((command, params))

        self.ChuangmiPlug, self.Device = ChuangmiPlug, Device

    def _call(self, what):
        self.calls.append(what)
        if self.fail:
            raise self.DeviceException("Unable to discover the device 127.0.0.1")


def test_miio_backend_switches_through_python_miio():
    token = "ab" * 16
    miio = _FakeMiio()
    plug = xr.MiioPlug(LOOPBACK, token, model="chuangmi.plug.m1", module=miio)
    plug.off()
    plug.on()
    kwargs = {"ip": LOOPBACK, "token": token, "model": "chuangmi.plug.m1"}
    constructed = ("ChuangmiPlug", kwargs)
    assert miio.calls == [constructed, "off", constructed, "on"]

    miio = _FakeMiio()
    xr.MiioPlug(LOOPBACK, token, protocol="miot", siid=3, module=miio).on()
    prop = {"did": "power", "siid": 3, "piid": 1, "value": True}
    assert miio.calls[1] == ("set_properties", [prop])

    with pytest.raises(xr.PlugError, match="could not be switched off.*discover"):
        xr.MiioPlug(LOOPBACK, token, module=_FakeMiio(fail=True)).off()
    with pytest.raises(xr.ConfigError, match="32-hex-digit"):
        xr.MiioPlug(LOOPBACK, "short", module=miio)


# --------------------------------------------------------------------------
# Scenes: power-on by power cycle, power-off by key, keys
# --------------------------------------------------------------------------


def test_on_scene_power_cycles_standby_to_on(make_projector, make_plug):
    fake = make_projector(state="STANDBY", boot_delay_s=0.05)
    plug = make_plug(fake)
    remote = make_remote(make_config(fake, plug, plug_off_wait_s=0.1))
    result = remote.run("on")
    assert result == xr.SceneResult("on", "on", result.message)
    assert plug.actions() == ["off", "on"]
    (t_off, *_), (t_on, *_) = plug.events
    assert t_on - t_off >= 0.1  # the configured wait, shortened from 10 s
    assert fake.states() == ["STANDBY", "UNPOWERED", "BOOTING", "ON"]
    assert remote.projector.status() == "on"


def test_on_scene_from_unpowered_reaches_on(make_projector, make_plug):
    fake = make_projector(state="UNPOWERED")
    plug = make_plug(fake)
    result = make_remote(make_config(fake, plug)).run("on")
    assert result.state == "on" and fake.state == "ON"
    assert fake.states() == ["UNPOWERED", "ON"]
    assert plug.actions() == ["off", "on"]


def test_on_scene_default_wait_is_ten_seconds(make_projector, make_plug):
    fake = make_projector(state="STANDBY")
    plug = make_plug(fake)
    config = make_config(fake, plug)
    default = xr.TimingConfig().plug_off_wait_s
    config = xr.Config(
        projector=config.projector,
        plug=config.plug,
        timings=xr.TimingConfig(plug_off_wait_s=default, poll_interval_s=0.02),
    )
    sleeps = []
    result = make_remote(config, sleep=sleeps.append).run("on")
    assert default == 10.0 and sleeps == [10.0] and result.state == "on"


def test_on_scene_leaves_a_running_projector_alone(fake, make_plug):
    plug = make_plug(fake)
    result = make_remote(make_config(fake, plug)).run("on")
    assert result.state == "on" and "already on" in result.message
    assert plug.actions() == [] and fake.states() == ["ON"]


def test_on_scene_times_out_without_power_on_with_ac(make_projector, make_plug):
    fake = make_projector(state="STANDBY", auto_boot_on_ac=False)
    plug = make_plug(fake)
    remote = make_remote(make_config(fake, plug, boot_timeout_s=0.2))
    with pytest.raises(xr.RemoteTimeout, match="within 0.2 s.*power on with AC"):
        remote.run("on")
    assert plug.actions() == ["off", "on"] and fake.state == "STANDBY"


def test_on_scene_reports_a_plug_left_off(make_projector, make_plug):
    fake = make_projector(state="STANDBY")
    plug = make_plug(fake, fail=("on",))
    with pytest.raises(xr.PlugError, match="HTTP 500.*left OFF"):
        make_remote(make_config(fake, plug)).run("on")
    assert fake.state == "UNPOWERED"


def test_on_scene_retries_the_plug(make_projector, make_plug):
    fake = make_projector(state="STANDBY")
    plug = make_plug(fake, fail_first=1)
    config = make_config(fake, plug)
    plug_config = xr.PlugConfig(
        backend="http", on_url=plug.on_url, off_url=plug.off_url, retry_interval_s=0
    )
    config = xr.Config(
        projector=config.projector, plug=plug_config, timings=config.timings
    )
    assert make_remote(config).run("on").state == "on"
    assert plug.actions() == ["off", "off", "on"]


def test_on_scene_without_liveness_port_cannot_confirm(make_projector, make_plug):
    fake = make_projector(state="STANDBY", opens_status_port=False)
    plug = make_plug(fake)
    result = make_remote(make_config(fake, plug)).run("on")
    assert result.state == "unknown" and "cannot be confirmed" in result.message
    assert plug.actions() == ["off", "on"] and fake.state == "ON"


def test_on_scene_needs_a_plug(make_projector):
    fake = make_projector(state="STANDBY")
    with pytest.raises(xr.ConfigError, match="needs a smart plug"):
        make_remote(make_config(fake)).run("on")


def test_dry_run_plug_prints_and_switches_nothing(make_projector):
    fake = make_projector(state="STANDBY")
    out, sleeps = io.StringIO(), []
    config = make_config(fake, plug_config=xr.PlugConfig(backend="dry-run"))
    result = make_remote(config, out=out, sleep=sleeps.append).run("on")
    text = out.getvalue()
    assert "would switch the smart plug off" in text
    assert "would switch the smart plug on" in text
    assert "dry-run" in result.message and sleeps == []
    assert fake.states() == ["STANDBY"]


@pytest.mark.parametrize("off_key, payload", [("power", b"116"), ("poweroff", b"30")])
def test_off_scene_on_to_standby(fake, off_key, payload):
    remote = make_remote(make_config(fake, scenes=xr.ScenesConfig(off_key=off_key)))
    result = remote.run("off")
    assert result.state == "off"
    assert fake.payloads() == [b"KEYPRESSES:" + payload]
    assert fake.states() == ["ON", "STANDBY"] and remote.projector.status() == "off"


def test_off_scene_resends_a_lost_key(make_projector):
    fake = make_projector(drop_first=1)
    config = make_config(fake, scenes=xr.ScenesConfig(off_resends=1), off_timeout_s=0.2)
    assert make_remote(config).run("off").state == "off"
    assert fake.dropped == [("key", b"KEYPRESSES:116")]
    assert fake.payloads() == [b"KEYPRESSES:116"] and fake.state == "STANDBY"


def test_off_scene_times_out_when_the_projector_stays_on(make_projector):
    fake = make_projector(drop_first=5)
    config = make_config(fake, scenes=xr.ScenesConfig(off_resends=1), off_timeout_s=0.1)
    with pytest.raises(xr.RemoteTimeout, match="2 time.*still answers"):
        make_remote(config).run("off")
    fake.sync()
    assert len(fake.dropped) == 2 and fake.state == "ON"


def test_off_scene_when_already_off_sends_nothing(make_projector):
    fake = make_projector(state="STANDBY")
    result = make_remote(make_config(fake)).run("off")
    assert result.state == "off" and "already off" in result.message
    fake.sync()
    assert fake.received == [] and fake.ignored == []


def test_off_scene_without_liveness_port_sends_once(make_projector):
    fake = make_projector(opens_status_port=False)
    result = make_remote(make_config(fake)).run("off")
    assert result.state == "unknown" and "cannot be confirmed" in result.message
    assert fake.payloads() == [b"KEYPRESSES:116"] and fake.state == "STANDBY"


@pytest.mark.parametrize(
    "scene, payloads",
    [
        ("volume-up", [b"KEYPRESSES:115"] * 2),
        ("volume-down", [b"KEYPRESSES:114"] * 2),
        ("volume-mute", [b"KEYPRESSES:113"]),
        ("play-pause", [b"KEYPRESSES:49"]),
    ],
)
def test_key_scenes(fake, scene, payloads):
    scenes = xr.ScenesConfig(volume_steps=2)
    result = make_remote(make_config(fake, scenes=scenes)).run(scene)
    assert result.scene == scene and result.state is None
    assert fake.payloads() == payloads


def test_unknown_scene_lists_valid_ones(fake):
    with pytest.raises(xr.UsageError, match="unknown scene 'disco'.*volume-up"):
        make_remote(make_config(fake)).run("disco")


# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------


def test_example_configuration_parses():
    config = xr.load_config(ROOT / "examples" / "xgimi-remote.toml")
    assert config.projector.key_port == 16735
    assert config.projector.advance_port == 16750
    assert config.projector.status_port == 554
    assert config.plug.backend == "http"
    assert config.timings.plug_off_wait_s == 10.0
    assert xr.Remote(config).has_scene("movie")


def test_documentation_toml_examples_parse():
    text = (ROOT / "docs" / "xgimi_remote.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, flags=re.S)
    assert blocks
    for block in blocks:
        xr.parse_config(tomllib.loads(block))


def test_defaults_without_a_configuration_file(tmp_path):
    config = xr.load_config()
    assert config == xr.Config()
    assert xr.default_config_path() == tmp_path / "xdg" / "xgimi-remote.toml"


def test_custom_scene_steps(fake, tmp_path):
    path = write_config(
        tmp_path,
        fake,
        '[scenes.custom]\nmovie = ["home", "advance:autofocus", "wait:0.01", "ok"]\n',
    )
    remote = make_remote(xr.load_config(path))
    assert "movie" in remote.scenes()
    remote.run("movie")
    assert fake.payloads("key") == [b"KEYPRESSES:35", b"KEYPRESSES:49"]
    assert fake.payloads("advance") == [(ADVANCE_TEMPLATE % "autofocus").encode()]


@pytest.mark.parametrize(
    "text, match",
    [
        ("[projector]\nhots = '1.2.3.4'\n", "unknown key 'hots' in \\[projector\\]"),
        ("[projektor]\nhost = '1.2.3.4'\n", "unknown section \\[projektor\\]"),
        ("[projector]\nkey_port = 70000\n", "key_port must be a port"),
        ("[projector]\nkey_port = '16735'\n", "key_port must be of type int"),
        ("[projector]\nudp_retries = true\n", "udp_retries must be an integer"),
        ("[timings]\nplug_off_wait_s = -1\n", "plug_off_wait_s must be a finite"),
        ("[timings]\npoll_interval_s = 0\n", "poll_interval_s must be a finite"),
        ("[plug]\nbackend = 'zigbee'\n", "backend must be one of"),
        ("[scenes]\noff_key = 'voice'\n", "off_key: key 'voice' is not supported"),
        ("[scenes.custom]\non = ['ok']\n", "differ from the built-in scenes"),
        ("[scenes.custom]\nx = ['bogus']\n", "bad step 'bogus'"),
        ("[scenes.custom]\nx = ['wait:soon']\n", "bad step 'wait:soon'"),
        ("[serve]\nport = -1\n", "port must be a port"),
        ("projector = 1\n", "\\[projector\\] must be a table"),
        ("[projector\n", "invalid TOML"),
    ],
)
def test_configuration_errors_name_file_and_key(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(xr.ConfigError, match=match) as info:
        xr.load_config(path)
    assert str(info.value).startswith(str(path))


def test_missing_configuration_file(tmp_path):
    with pytest.raises(xr.ConfigError, match="does not exist"):
        xr.load_config(tmp_path / "nope.toml")


# --------------------------------------------------------------------------
# HTTP serve mode
# --------------------------------------------------------------------------


def test_serve_runs_a_scene_with_a_good_token(fake, make_server):
    server = make_server(make_remote(make_config(fake)))
    status, body = http_call(f"{server.url}/scene/volume-up", headers=bearer())
    assert status == 200 and body["ok"] and body["scene"] == "volume-up"
    status, _ = http_call(f"{server.url}/scene/play-pause", headers={"X-Token": TOKEN})
    assert status == 200
    assert fake.payloads() == [b"KEYPRESSES:115", b"KEYPRESSES:49"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        bearer("wrong-token-0123456789abcdef"),
        bearer(TOKEN[:-1]),
        {"X-Token": TOKEN + "x"},
        {"Authorization": f"Basic {TOKEN}"},
    ],
)
def test_serve_rejects_bad_tokens_without_action(fake, make_server, headers):
    server = make_server(make_remote(make_config(fake)))
    for path in ("/scene/off", "/scene/nonexistent", "/scenes", "/status"):
        method = "POST" if path.startswith("/scene/") else "GET"
        status, body = http_call(server.url + path, method, headers)
        assert status == 401 and body == {"error": "missing or bad token"}
    assert fake.payloads() == [] and fake.state == "ON"


def test_serve_rejects_unknown_scenes_and_methods_without_action(fake, make_server):
    server = make_server(make_remote(make_config(fake)))
    status, body = http_call(f"{server.url}/scene/self-destruct", headers=bearer())
    assert status == 404 and "volume-up" in body["scenes"]
    status, _ = http_call(f"{server.url}/scene/off", "GET", bearer())
    assert status == 405
    status, _ = http_call(f"{server.url}/nothing", "POST", bearer())
    assert status == 404
    assert fake.payloads() == [] and fake.state == "ON"


def test_serve_lists_scenes_and_status(fake, make_server):
    server = make_server(make_remote(make_config(fake)))
    status, body = http_call(f"{server.url}/scenes", "GET", bearer())
    assert status == 200 and set(xr.BUILTIN_SCENES) <= set(body["scenes"])
    assert http_call(f"{server.url}/status", "GET", bearer()) == (200, {"state": "on"})


def test_serve_reports_scene_failures_and_busy(make_projector, make_server):
    fake = make_projector(state="STANDBY")
    server = make_server(make_remote(make_config(fake)))  # no plug configured
    status, body = http_call(f"{server.url}/scene/on", headers=bearer())
    assert status == 502 and not body["ok"] and "needs a smart plug" in body["error"]
    with server.scene_lock:
        status, _ = http_call(f"{server.url}/scene/volume-up", headers=bearer())
    assert status == 409


def test_serve_state_machine_over_http(make_projector, make_plug, make_server):
    fake = make_projector(state="STANDBY")
    plug = make_plug(fake)
    server = make_server(make_remote(make_config(fake, plug, plug_off_wait_s=0.05)))
    status, body = http_call(f"{server.url}/scene/on", headers=bearer())
    assert (status, body["state"]) == (200, "on") and fake.state == "ON"
    status, body = http_call(f"{server.url}/scene/off", headers=bearer())
    assert (status, body["state"]) == (200, "off") and fake.state == "STANDBY"


@pytest.mark.parametrize("token", [None, "", "short"])
def test_serve_requires_a_long_token(fake, token):
    with pytest.raises(xr.ConfigError, match="at least 16"):
        xr.SceneServer(make_remote(make_config(fake)), token, LOOPBACK, 0)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def test_cli_key_and_advance_with_host_only(fake, capsys):
    ports = ["--key-port", str(fake.key_port), "--advance-port", str(fake.advance_port)]
    assert xr.main(["--host", LOOPBACK, *ports, "key", "ok", "home"]) == 0
    assert xr.main(["advance", "autofocus", "--host", LOOPBACK, *ports]) == 0
    assert fake.payloads("key") == [b"KEYPRESSES:49", b"KEYPRESSES:35"]
    assert fake.payloads("advance") == [(ADVANCE_TEMPLATE % "autofocus").encode()]
    assert "sent advance:autofocus" in capsys.readouterr().out


def test_cli_flags_override_the_configuration_file(fake, tmp_path, capsys):
    path = tmp_path / "c.toml"
    closed = _closed_port(socket.SOCK_STREAM)
    path.write_text(f'[projector]\nhost = "10.0.0.999"\nstatus_port = {closed}\n')
    argv = ["--config", str(path), "--host", LOOPBACK, "status"]
    assert xr.main(argv) == 0
    assert capsys.readouterr().out == "off\n"
    assert xr.main([*argv, "--status-port", str(fake.status_port)]) == 0
    assert capsys.readouterr().out == "on\n"


def test_cli_scenes_with_configuration(make_projector, make_plug, tmp_path, capsys):
    fake = make_projector(state="STANDBY")
    plug = make_plug(fake)
    extra = (
        f'[plug]\nbackend = "http"\non_url = "{plug.on_url}"\n'
        f'off_url = "{plug.off_url}"\n'
        '[scenes]\nvolume_steps = 1\n[scenes.custom]\nmovie = ["home"]\n'
    )
    config = ["--config", write_config(tmp_path, fake, extra)]
    assert xr.main([*config, "on"]) == 0
    assert "projector is on" in capsys.readouterr().out
    assert xr.main([*config, "volume", "down"]) == 0
    assert xr.main([*config, "play-pause"]) == 0
    assert xr.main([*config, "scene", "movie"]) == 0
    assert xr.main([*config, "off"]) == 0
    assert "projector is off" in capsys.readouterr().out
    assert plug.actions() == ["off", "on"]
    codes = [114, 49, 35, 116]  # volume down, play-pause, movie (home), off (power)
    assert fake.payloads() == [b"KEYPRESSES:%d" % code for code in codes]
    assert fake.state == "STANDBY"
    assert xr.main([*config, "scenes"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in [*xr.BUILTIN_SCENES, "movie"])


def test_cli_dry_run_flag(make_projector, capsys):
    fake = make_projector(state="STANDBY")
    argv = ["--host", LOOPBACK, "--status-port", str(fake.status_port), "on"]
    assert xr.main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would switch the smart plug off" in out and fake.state == "STANDBY"


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--host", LOOPBACK, "key", "bogus"], "unknown key 'bogus'; valid keys: ok"),
        (["--host", LOOPBACK, "advance", "ok"], "unknown advance command"),
        (["key", "ok"], "no projector host: pass --host"),
        (["--host", "10.0.0.300", "key", "ok"], "invalid IP address '10.0.0.300'"),
        (["--host", LOOPBACK, "--key-port", "0", "key", "ok"], "must be a port"),
        (["--config", "/nonexistent/x.toml", "status"], "does not exist"),
        (["--host", LOOPBACK, "scene", "disco"], "unknown scene 'disco'"),
        (["--host", LOOPBACK, "serve"], "shared-secret token"),
    ],
)
def test_cli_usage_errors_are_one_line(capsys, argv, match):
    assert xr.main(argv) == 2
    err = one_line_error(capsys.readouterr().err)
    assert err.startswith("xgimi_remote: error: ") and re.search(match, err), err


@pytest.mark.parametrize(
    "argv, match",
    [(["volume", "sideways"], "invalid choice"), (["--retries", "x", "on"], "int")],
)
def test_cli_argument_errors_print_usage_without_traceback(capsys, argv, match):
    assert xr.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage:") and "Traceback" not in err
    assert re.search(match, err.strip().splitlines()[-1])


def test_cli_runtime_errors_are_one_line(make_projector, tmp_path, capsys):
    fake = make_projector(state="STANDBY")
    url = f"http://{LOOPBACK}:{_closed_port(socket.SOCK_STREAM)}/relay/0?turn="
    extra = f'[plug]\nbackend = "http"\non_url = "{url}on"\noff_url = "{url}off"\n'
    extra += "retries = 0\n"
    assert xr.main(["--config", write_config(tmp_path, fake, extra), "on"]) == 1
    err = one_line_error(capsys.readouterr().err)
    assert err.startswith("xgimi_remote: error: smart plug unreachable at http://")

    key_port = str(_closed_port(socket.SOCK_DGRAM))
    argv = ["--host", LOOPBACK, "--key-port", key_port, "--retries", "0", "key", "ok"]
    assert xr.main(argv) == 1
    assert "port unreachable" in one_line_error(capsys.readouterr().err)


def test_cli_unexpected_errors_are_one_line_unless_debug(fake, monkeypatch, capsys):
    def explode(self, name):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(xr.Remote, "run", explode)
    argv = ["--host", LOOPBACK, "--status-port", str(fake.status_port), "play-pause"]
    assert xr.main(argv) == 70
    err = one_line_error(capsys.readouterr().err)
    assert "internal error: RuntimeError: boom second line" in err
    with pytest.raises(RuntimeError):
        xr.main([*argv, "--debug"])


def test_script_uses_only_the_standard_library():
    tree = ast.parse(SCRIPT.read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules.add(node.module.split(".")[0])
    assert modules - set(sys.stdlib_module_names) == {"miio"}  # optional, lazy
    assert "jax" not in modules


def test_subprocess_cli(fake, tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    run = [sys.executable, str(SCRIPT), "--host", LOOPBACK]
    ok = subprocess.run(
        [*run, "--key-port", str(fake.key_port), "key", "menu"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert (ok.returncode, ok.stderr) == (0, "") and ok.stdout == "sent menu\n"
    assert fake.payloads() == [b"KEYPRESSES:139"]
    bad = subprocess.run(
        [*run, "key", "teleport"], capture_output=True, text=True, env=env, timeout=30
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert "unknown key 'teleport'" in one_line_error(bad.stderr)


def test_cli_serve_starts_with_the_environment_token(fake, monkeypatch, capsys):
    seen = []

    def serve_forever(self, poll_interval=0.5):
        seen.append((self.server_address[0], self.token))
        raise KeyboardInterrupt  # what Ctrl-C does to the real loop

    monkeypatch.setattr(xr.SceneServer, "serve_forever", serve_forever)
    monkeypatch.setenv(xr.TOKEN_ENV, TOKEN)
    argv = ["--host", LOOPBACK, "serve", "--port", "0"]
    assert xr.main(argv) == 0
    assert seen == [(LOOPBACK, TOKEN.encode())]
    assert re.match(
        r"serving scenes on http://127\.0\.0\.1:\d+ ", capsys.readouterr().out
    )
