#!/usr/bin/env python3
"""Command-line remote for XGIMI projectors: LAN keys, smart-plug power-on, scenes.

Implements the smart-home control scheme of J. Su, "智能家居之小爱同学控制
极米投影仪的简单方案" (kexue.fm/archives/9365, 2022) with the XGIMI LAN protocol as
implemented in the third-party Home Assistant component
`manymuch/Xgimi-4-Home-Assistant` (summarised in `reference/projector.md`):

* key presses: ASCII ``KEYPRESSES:<code>`` datagrams to UDP port 16735;
* "advance" commands: the Python ``str(dict)`` rendering of
  ``{'action': 20000, 'controlCmd': {'data': <name>, ...}, 'msgid': '2'}`` to
  UDP port 16750 (single quotes; it is not JSON);
* liveness: a successful TCP connect to port 554 means "on";
* power-on: no LAN path exists while the projector is off, so a smart plug is
  power-cycled (off, wait 10 s, on) with the projector's "power on with AC"
  setting enabled, and the liveness port is polled until the projector is up.

Standard library only; python-miio is imported only by the Mi Home plug
backend. The user guide is ``docs/xgimi_remote.md``.

Usage::

    python scripts/xgimi_remote.py --host 192.168.1.50 key ok
    python scripts/xgimi_remote.py on          # with ~/.config/xgimi-remote.toml
    python scripts/xgimi_remote.py serve       # HTTP endpoint for a smart-home hub
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hmac
import http.client
import http.server
import ipaddress
import json
import os
import pathlib
import re
import socket
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any, NamedTuple, TextIO

KEY_PORT = 16735
ADVANCE_PORT = 16750
STATUS_PORT = 554
SERVE_PORT = 8735
TOKEN_ENV = "XGIMI_REMOTE_TOKEN"
MIN_TOKEN_LENGTH = 16
MAX_REQUEST_BODY = 4096

# Key codes of the projector's UDP key service (reference §2.1). 113-116 and 139
# equal Linux input-event codes; the rest are XGIMI-specific.
KEY_CODES: dict[str, int] = {
    "ok": 49,
    "back": 48,
    "home": 35,
    "menu": 139,
    "up": 36,
    "down": 38,
    "left": 50,
    "right": 37,
    "volume_down": 114,
    "volume_up": 115,
    "mute": 113,
    "power": 116,
    "poweroff": 30,
}
# Model-dependent commands (reference §2.1, second table). They are accepted by
# `key` as KEYPRESSES codes and by `advance` by name, as the newest component does.
MODEL_KEY_CODES: dict[str, int] = {
    "autofocus": 2099,
    "autofocus_new": 2103,
    "manual_focus_left": 2097,
    "manual_focus_right": 2098,
    "motor_left_start": 2092,
    "motor_right_start": 2093,
    "motor_left_overstep": 2095,
    "motor_right_overstep": 2096,
    "motor_stop": 2101,
    "shortcut_setting": 2094,
    "choose_source": 2102,
    "hibernate": 2106,
    "xmusic": 2108,
}
ALL_KEY_CODES: dict[str, int] = {**KEY_CODES, **MODEL_KEY_CODES}
KEY_ALIASES: dict[str, str] = {
    "play": "ok",
    "pause": "ok",
    "play_pause": "ok",
    "enter": "ok",
    "vol+": "volume_up",
    "vol-": "volume_down",
    "vol_up": "volume_up",
    "vol_down": "volume_down",
    "volumeup": "volume_up",
    "volumedown": "volume_down",
    "volumemute": "mute",
    "power_off": "poweroff",
    "focus": "autofocus",
    "source": "choose_source",
}
# Keys a user may expect but that have no LAN code: fail explicitly (reference §4).
UNSUPPORTED_KEYS: dict[str, str] = {
    "voice": "the voice key has no LAN code (its microphone is in the original "
    "remote)",
    "power_on": "a projector in standby has no network, so it cannot be switched "
    "on over the LAN; use the 'on' scene (smart-plug power cycle)",
}
for _alias in ("poweron", "on", "wake"):
    UNSUPPORTED_KEYS[_alias] = UNSUPPORTED_KEYS["power_on"]
del _alias

PLUG_BACKENDS = ("none", "http", "miio", "dry-run")
SCENE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


# --------------------------------------------------------------------------
# Errors: each carries the exit code of the command line.
# --------------------------------------------------------------------------


class RemoteError(Exception):
    """A failure reported to the user as one line (exit status 1)."""

    exit_code = 1


class UsageError(RemoteError, ValueError):
    """A bad argument: unknown key or scene, invalid host (exit status 2)."""

    exit_code = 2


class ConfigError(UsageError):
    """A missing or invalid configuration value (exit status 2)."""


class ProjectorError(RemoteError):
    """The projector could not be reached over UDP."""


class PlugError(RemoteError):
    """The smart plug could not be switched."""


class RemoteTimeout(RemoteError):
    """The projector did not reach the expected state in time."""


# --------------------------------------------------------------------------
# Protocol payloads
# --------------------------------------------------------------------------


def key_name(name: str) -> str:
    """Canonical key name for `name` (case, '-', aliases); UsageError if unknown."""
    raw = str(name).strip().lower()
    norm = re.sub(r"[\s-]+", "_", raw)
    for candidate in (raw, norm):
        if candidate in ALL_KEY_CODES:
            return candidate
        if candidate in KEY_ALIASES:
            return KEY_ALIASES[candidate]
    if norm in UNSUPPORTED_KEYS:
        raise UsageError(f"key {name!r} is not supported: {UNSUPPORTED_KEYS[norm]}")
    raise UsageError(
        f"unknown key {name!r}; valid keys: {', '.join(ALL_KEY_CODES)} "
        f"(aliases: {', '.join(KEY_ALIASES)})"
    )


def advance_name(name: str) -> str:
    """Canonical advance-command name; UsageError listing valid ones if unknown."""
    norm = re.sub(r"[\s-]+", "_", str(name).strip().lower())
    norm = KEY_ALIASES.get(norm, norm)
    if norm not in MODEL_KEY_CODES:
        raise UsageError(
            f"unknown advance command {name!r}; valid commands: "
            f"{', '.join(MODEL_KEY_CODES)}"
        )
    return norm


def key_payload(name: str) -> bytes:
    """The UDP-16735 datagram for key `name`: ASCII ``KEYPRESSES:<code>``."""
    return f"KEYPRESSES:{ALL_KEY_CODES[key_name(name)]}".encode("ascii")


def advance_payload(name: str) -> bytes:
    """The UDP-16750 datagram for advance command `name`.

    The projector expects Python's ``str(dict)`` rendering (single quotes), as
    built by the reference component, not JSON.
    """
    message = {
        "action": 20000,
        "controlCmd": {
            "data": advance_name(name),
            "delayTime": 0,
            "mode": 5,
            "time": 0,
            "type": 0,
        },
        "msgid": "2",
    }
    return str(message).encode("ascii")


def resolve_host(host: str | None, resolver: Callable[..., Any] = socket.getaddrinfo):
    """Validate `host` (IP literal or DNS name) and return its IP address string."""
    text = "" if host is None else str(host).strip()
    if not text:
        raise ConfigError(
            "no projector host: pass --host IP or set [projector] host in the "
            "configuration file"
        )
    if re.fullmatch(r"[0-9.]+", text) or ":" in text:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise ConfigError(
                f"invalid IP address {text!r}: expected four numbers 0-255 such as "
                "192.168.1.50, or an IPv6 address"
            ) from None
    else:
        label = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
        if len(text) > 253 or not re.fullmatch(rf"{label}(?:\.{label})*\.?", text):
            raise ConfigError(f"invalid host name {text!r}")
        try:
            infos = resolver(text, None, type=socket.SOCK_DGRAM)
        except (OSError, UnicodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ConfigError(
                f"cannot resolve projector host {text!r}: {reason}"
            ) from exc
        if not infos:
            raise ConfigError(f"cannot resolve projector host {text!r}: no address")
        infos = sorted(infos, key=lambda info: info[0] != socket.AF_INET)
        address = ipaddress.ip_address(infos[0][4][0].split("%")[0])
    if (
        address.is_unspecified
        or address.is_multicast
        or address == ipaddress.IPv4Address("255.255.255.255")
    ):
        raise ConfigError(f"{text!r} is not a unicast address of a projector")
    return str(address)


# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------


def _check_port(where: str, value: int, *, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if not low <= value <= 65535:
        raise ConfigError(f"{where} must be a port in {low}..65535, got {value}")


def _check_min(where: str, value: float, low: float, *, strict: bool = False) -> None:
    bad = value != value or value in (float("inf"), float("-inf"))
    bad = bad or (value <= low if strict else value < low)
    if bad:
        relation = ">" if strict else ">="
        raise ConfigError(
            f"{where} must be a finite number {relation} {low}, got {value}"
        )


@dataclasses.dataclass(frozen=True)
class ProjectorConfig:
    """[projector]: address, ports, liveness probe and UDP retries."""

    host: str | None = None
    key_port: int = KEY_PORT
    advance_port: int = ADVANCE_PORT
    status_port: int = STATUS_PORT
    status_timeout_s: float = 1.0
    # False for models that never open the liveness port: "unknown", not "off".
    status_port_opens: bool = True
    udp_retries: int = 2
    udp_retry_interval_s: float = 0.2
    udp_check_s: float = 0.1

    def __post_init__(self):
        for name in ("key_port", "advance_port", "status_port"):
            _check_port(f"[projector] {name}", getattr(self, name))
        _check_min(
            "[projector] status_timeout_s", self.status_timeout_s, 0, strict=True
        )
        _check_min("[projector] udp_retries", self.udp_retries, 0)
        _check_min("[projector] udp_retry_interval_s", self.udp_retry_interval_s, 0)
        _check_min("[projector] udp_check_s", self.udp_check_s, 0)


@dataclasses.dataclass(frozen=True)
class PlugConfig:
    """[plug]: the smart plug that power-cycles the projector."""

    backend: str = "none"
    on_url: str | None = None
    off_url: str | None = None
    method: str = "GET"
    host: str | None = None
    token: str | None = None
    model: str | None = None
    protocol: str = "miio"
    siid: int = 2
    piid: int = 1
    timeout_s: float = 5.0
    retries: int = 2
    retry_interval_s: float = 1.0

    def __post_init__(self):
        if self.backend not in PLUG_BACKENDS:
            raise ConfigError(
                f"[plug] backend must be one of {', '.join(PLUG_BACKENDS)}, "
                f"got {self.backend!r}"
            )
        if self.method.upper() not in ("GET", "POST", "PUT"):
            raise ConfigError(
                f"[plug] method must be GET, POST or PUT, got {self.method!r}"
            )
        if self.protocol not in ("miio", "miot"):
            raise ConfigError(
                f"[plug] protocol must be miio or miot, got {self.protocol!r}"
            )
        _check_min("[plug] timeout_s", self.timeout_s, 0, strict=True)
        _check_min("[plug] retries", self.retries, 0)
        _check_min("[plug] retry_interval_s", self.retry_interval_s, 0)


@dataclasses.dataclass(frozen=True)
class TimingConfig:
    """[timings]: the power-cycle wait and the polling of the liveness port."""

    plug_off_wait_s: float = 10.0
    boot_timeout_s: float = 120.0
    off_timeout_s: float = 20.0
    poll_interval_s: float = 2.0
    key_interval_s: float = 0.3

    def __post_init__(self):
        for field in dataclasses.fields(self):
            _check_min(f"[timings] {field.name}", getattr(self, field.name), 0)
        _check_min("[timings] poll_interval_s", self.poll_interval_s, 0, strict=True)


@dataclasses.dataclass(frozen=True)
class ScenesConfig:
    """[scenes]: built-in scene options and [scenes.custom] key sequences."""

    off_key: str = "power"
    off_resends: int = 1
    volume_steps: int = 1
    custom: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __post_init__(self):
        try:
            key_name(self.off_key)
        except UsageError as exc:
            raise ConfigError(f"[scenes] off_key: {exc}") from None
        _check_min("[scenes] off_resends", self.off_resends, 0)
        _check_min("[scenes] volume_steps", self.volume_steps, 1)
        for name, steps in self.custom:
            if not SCENE_NAME.fullmatch(name) or name in BUILTIN_SCENES:
                raise ConfigError(
                    f"[scenes.custom] name {name!r} must be lower-case letters, "
                    "digits, '-' or '_' and differ from the built-in scenes"
                )
            if not steps:
                raise ConfigError(f"[scenes.custom] {name} has no steps")
            for step in steps:
                _parse_step(step, f"[scenes.custom] {name}")


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """[serve]: the HTTP endpoint for a home-automation hub."""

    address: str = "127.0.0.1"
    port: int = SERVE_PORT
    token: str | None = None

    def __post_init__(self):
        _check_port("[serve] port", self.port, allow_zero=True)


@dataclasses.dataclass(frozen=True)
class Config:
    """The whole configuration; `source` is the file it came from, if any."""

    projector: ProjectorConfig = ProjectorConfig()
    plug: PlugConfig = PlugConfig()
    timings: TimingConfig = TimingConfig()
    scenes: ScenesConfig = ScenesConfig()
    serve: ServeConfig = ServeConfig()
    source: pathlib.Path | None = None


_SECTIONS = {
    "projector": ProjectorConfig,
    "plug": PlugConfig,
    "timings": TimingConfig,
    "scenes": ScenesConfig,
    "serve": ServeConfig,
}
_TYPES = {"int": int, "float": float, "bool": bool, "str": str, "str | None": str}


def default_config_path() -> pathlib.Path:
    """``$XDG_CONFIG_HOME/xgimi-remote.toml``, by default ``~/.config/...``."""
    base = os.environ.get("XDG_CONFIG_HOME") or pathlib.Path.home() / ".config"
    return pathlib.Path(base) / "xgimi-remote.toml"


def parse_config(data: dict, source: pathlib.Path | None = None) -> Config:
    """Build a validated Config from a parsed TOML document."""
    where = f"{source}: " if source else ""
    sections = {}
    for section, table in data.items():
        if section not in _SECTIONS:
            raise ConfigError(
                f"{where}unknown section [{section}]; valid sections: "
                f"{', '.join(_SECTIONS)}"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{where}[{section}] must be a table")
        cls = _SECTIONS[section]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in table.items():
            if section == "scenes" and key == "custom":
                kwargs["custom"] = _parse_custom(value, where)
                continue
            if key not in fields or key == "custom":
                valid = ", ".join(name for name in fields if name != "custom")
                raise ConfigError(
                    f"{where}unknown key {key!r} in [{section}]; valid keys: {valid}"
                )
            kwargs[key] = _typed(value, fields[key].type, f"{where}[{section}] {key}")
        try:
            sections[section] = cls(**kwargs)
        except ConfigError as exc:
            raise ConfigError(f"{where}{exc}") from None
    return Config(**sections, source=source)


def load_config(path: str | os.PathLike | None = None) -> Config:
    """Read `path`, or the default file if it exists, else return the defaults."""
    if path is None:
        path = default_config_path()
        if not path.is_file():
            return Config()
    path = pathlib.Path(path).expanduser()
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_config(data, path)


def _typed(value: Any, type_name: str, where: str) -> Any:
    """Check a TOML value against a dataclass field type (ints accepted as floats)."""
    kind = _TYPES[type_name]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, bool):
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if not isinstance(value, kind):
        raise ConfigError(f"{where} must be of type {kind.__name__}, got {value!r}")
    return value


def _parse_custom(value: Any, where: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """[scenes.custom]: a table of scene name -> list of steps."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where}[scenes.custom] must be a table of step lists")
    scenes = []
    for name, steps in value.items():
        if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
            raise ConfigError(
                f"{where}[scenes.custom] {name} must be a list of strings"
            )
        scenes.append((name, tuple(steps)))
    return tuple(scenes)


def _parse_step(step: str, where: str) -> tuple[str, Any]:
    """A custom-scene step: 'KEY', 'advance:NAME' or 'wait:SECONDS'."""
    kind, sep, arg = step.partition(":")
    kind = kind.strip().lower()
    try:
        if sep and kind == "advance":
            return ("advance", advance_name(arg))
        if sep and kind == "wait":
            seconds = float(arg)
            _check_min(f"{where} wait", seconds, 0)
            return ("wait", seconds)
        if sep and kind == "key":
            return ("key", key_name(arg))
        return ("key", key_name(step))
    except ValueError as exc:
        raise ConfigError(f"{where}: bad step {step!r}: {exc}") from None


# --------------------------------------------------------------------------
# Projector client
# --------------------------------------------------------------------------


class Projector:
    """UDP key/advance client and TCP liveness probe for one XGIMI projector.

    UDP gives no acknowledgement. A send is retried `udp_retries` times when the
    local stack reports an error or when the host answers with ICMP "port
    unreachable" within `udp_check_s` (it is up but nothing listens, e.g. while
    booting or on an Android-TV model without the XGIMI service).
    """

    def __init__(
        self,
        host: str,
        *,
        key_port: int = KEY_PORT,
        advance_port: int = ADVANCE_PORT,
        status_port: int = STATUS_PORT,
        status_timeout_s: float = 1.0,
        status_port_opens: bool = True,
        udp_retries: int = 2,
        udp_retry_interval_s: float = 0.2,
        udp_check_s: float = 0.1,
        resolver: Callable[..., Any] = socket.getaddrinfo,
        socket_factory: Callable[..., socket.socket] = socket.socket,
        sleep: Callable[[float], None] = time.sleep,
    ):
        # Re-validate through the config class so direct use gets the same errors.
        ProjectorConfig(
            host=host,
            key_port=key_port,
            advance_port=advance_port,
            status_port=status_port,
            status_timeout_s=status_timeout_s,
            udp_retries=udp_retries,
            udp_retry_interval_s=udp_retry_interval_s,
            udp_check_s=udp_check_s,
        )
        self.host = host
        self.address = resolve_host(host, resolver)
        self.key_port = key_port
        self.advance_port = advance_port
        self.status_port = status_port
        self.status_timeout_s = status_timeout_s
        self.status_port_opens = status_port_opens
        self.udp_retries = udp_retries
        self.udp_retry_interval_s = udp_retry_interval_s
        self.udp_check_s = udp_check_s
        self._socket = socket_factory
        self._sleep = sleep

    @classmethod
    def from_config(cls, config: ProjectorConfig, **kwargs) -> Projector:
        """Build from a [projector] section; `kwargs` inject resolver/socket/sleep."""
        values = dataclasses.asdict(config)
        return cls(values.pop("host"), **values, **kwargs)

    def key(self, name: str) -> bytes:
        """Send key `name` (see KEY_CODES, MODEL_KEY_CODES); return the payload."""
        payload = key_payload(name)
        self._send(payload, self.key_port)
        return payload

    def advance(self, name: str) -> bytes:
        """Send advance command `name` to the advance port; return the payload."""
        payload = advance_payload(name)
        self._send(payload, self.advance_port)
        return payload

    def status(self) -> str:
        """'on' if the liveness port accepts a TCP connection, else 'off'.

        Models that never open the port (`status_port_opens=False`) report
        'unknown' instead of 'off' when the connection fails.
        """
        try:
            with socket.create_connection(
                (self.address, self.status_port), timeout=self.status_timeout_s
            ):
                return "on"
        except OSError:
            return "off" if self.status_port_opens else "unknown"

    def _send(self, payload: bytes, port: int) -> int:
        """Send one datagram with retries; return the number of attempts used."""
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        reason = ""
        attempts = self.udp_retries + 1
        for attempt in range(attempts):
            if attempt:
                self._sleep(self.udp_retry_interval_s)
            try:
                with self._socket(family, socket.SOCK_DGRAM) as sock:
                    sock.connect((self.address, port))
                    sock.send(payload)
                    if self.udp_check_s > 0:
                        # A connected UDP socket surfaces an ICMP "port unreachable"
                        # as ECONNREFUSED on the next receive.
                        sock.settimeout(self.udp_check_s)
                        try:
                            sock.recv(1024)
                        except TimeoutError:
                            pass
                return attempt + 1
            except ConnectionRefusedError:
                reason = "port unreachable (the host is up but nothing listens there)"
            except OSError as exc:
                reason = exc.strerror or str(exc)
        raise ProjectorError(
            f"could not send {payload.decode('ascii')[:40]!r} to "
            f"{self.address}:{port} after {attempts} attempt(s): {reason}"
        )


# --------------------------------------------------------------------------
# Smart plugs
# --------------------------------------------------------------------------


class Plug:
    """A switchable smart plug; subclasses implement `_switch(on)`."""

    backend = "none"
    dry_run = False

    def on(self) -> None:
        """Switch the plug on."""
        self._switch(True)

    def off(self) -> None:
        """Switch the plug off."""
        self._switch(False)

    def _switch(self, on: bool) -> None:
        raise ConfigError(
            "this scene needs a smart plug: set [plug] backend to http, miio or "
            "dry-run in the configuration file (or pass --dry-run)"
        )


class HttpPlug(Plug):
    """A plug switched by plain HTTP requests (Tasmota, Shelly, ...)."""

    backend = "http"

    def __init__(
        self,
        on_url: str | None,
        off_url: str | None,
        *,
        method: str = "GET",
        timeout_s: float = 5.0,
    ):
        self._urls = {}
        for state, url in (("on", on_url), ("off", off_url)):
            try:
                parts = urllib.parse.urlsplit(url or "")
                _ = parts.port  # raises ValueError for a malformed port
                valid = parts.scheme in ("http", "https") and bool(parts.hostname)
            except ValueError:
                valid = False
            if not valid:
                raise ConfigError(
                    f"the http plug backend needs [plug] {state}_url as an http:// or "
                    f"https:// URL, got {_redact(url or '')!r}"
                )
            self._urls[state] = _split_credentials(url)
        self.method = method.upper()
        self.timeout_s = timeout_s
        # A plug lives on the LAN: never route its requests through a proxy.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _switch(self, on: bool) -> None:
        state = "on" if on else "off"
        url, auth = self._urls[state]
        shown = _redact(url)
        data = b"" if self.method in ("POST", "PUT") else None
        request = urllib.request.Request(url, data=data, method=self.method)
        if auth:
            request.add_header("Authorization", auth)
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                response.read(65536)
        except urllib.error.HTTPError as exc:
            exc.close()
            raise PlugError(
                f"smart plug at {shown} answered HTTP {exc.code} {exc.reason} "
                f"when switched {state}"
            ) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise PlugError(
                    f"smart plug at {shown} timed out after {self.timeout_s:g} s"
                ) from None
            reason = getattr(exc.reason, "strerror", None) or str(exc.reason)
            raise PlugError(f"smart plug unreachable at {shown}: {reason}") from None
        except TimeoutError:
            raise PlugError(
                f"smart plug at {shown} timed out after {self.timeout_s:g} s"
            ) from None
        except http.client.HTTPException as exc:
            raise PlugError(
                f"smart plug at {shown} sent a malformed answer: {type(exc).__name__}"
            ) from None
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise PlugError(f"smart plug unreachable at {shown}: {reason}") from None


class MiioPlug(Plug):
    """A Mi Home plug through the optional python-miio package.

    `protocol="miio"` uses ``miio.ChuangmiPlug`` (chuangmi.plug.*); "miot" sends
    MIoT ``set_properties`` on (`siid`, `piid`), by default the switch (2, 1).
    """

    backend = "miio"

    def __init__(
        self,
        host: str | None,
        token: str | None,
        *,
        model: str | None = None,
        protocol: str = "miio",
        siid: int = 2,
        piid: int = 1,
        timeout_s: float = 5.0,
        module: Any = None,
    ):
        if not host:
            raise ConfigError("the miio plug backend needs [plug] host")
        if not token or not re.fullmatch(r"[0-9a-fA-F]{32}", token):
            raise ConfigError(
                "the miio plug backend needs [plug] token: the device's 32-hex-digit "
                "Mi Home token"
            )
        if module is None:
            try:
                import miio as module
            except ImportError:
                raise ConfigError(
                    "the miio plug backend needs python-miio, which is not "
                    "installed: pip install python-miio"
                ) from None
        self._miio = module
        self.host = resolve_host(host)
        self.token = token
        self.model = model
        self.protocol = protocol
        self.siid = siid
        self.piid = piid
        self.timeout_s = timeout_s

    def _switch(self, on: bool) -> None:
        state = "on" if on else "off"
        try:
            if self.protocol == "miot":
                device = self._miio.Device(
                    ip=self.host, token=self.token, timeout=self.timeout_s
                )
                prop = {"did": "power", "siid": self.siid, "piid": self.piid}
                device.send("set_properties", [{**prop, "value": on}])
            else:
                extra = {"model": self.model} if self.model else {}
                plug = self._miio.ChuangmiPlug(ip=self.host, token=self.token, **extra)
                if on:
                    plug.on()
                else:
                    plug.off()
        except Exception as exc:  # python-miio raises DeviceException and others.
            raise PlugError(
                f"Mi Home plug at {self.host} could not be switched {state}: "
                f"{type(exc).__name__}: {exc}"
            ) from None


class DryRunPlug(Plug):
    """Prints what it would do; the `on` scene then skips waiting and polling."""

    backend = "dry-run"
    dry_run = True

    def __init__(self, out: TextIO | None = None):
        self._out = out

    def _switch(self, on: bool) -> None:
        out = self._out or sys.stdout
        print(f"dry-run: would switch the smart plug {'on' if on else 'off'}", file=out)


def make_plug(config: PlugConfig, out: TextIO | None = None) -> Plug:
    """The plug backend selected by `config.backend`."""
    if config.backend == "http":
        return HttpPlug(
            config.on_url,
            config.off_url,
            method=config.method,
            timeout_s=config.timeout_s,
        )
    if config.backend == "miio":
        return MiioPlug(
            config.host,
            config.token,
            model=config.model,
            protocol=config.protocol,
            siid=config.siid,
            piid=config.piid,
            timeout_s=config.timeout_s,
        )
    if config.backend == "dry-run":
        return DryRunPlug(out)
    return Plug()


def _split_credentials(url: str) -> tuple[str, str | None]:
    """Move ``user:pass@`` out of a URL into a Basic Authorization header."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return url, None
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port:
        netloc += f":{parts.port}"
    user = urllib.parse.unquote(parts.username)
    password = urllib.parse.unquote(parts.password or "")
    auth = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), f"Basic {auth}"


def _redact(url: str) -> str:
    """A URL without credentials or query values, safe for error messages."""
    try:
        parts = urllib.parse.urlsplit(url)
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
    except ValueError:
        return "<invalid URL>"
    query = "?..." if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}" if parts.scheme else url


# --------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------


class SceneResult(NamedTuple):
    """What a scene did: `state` is the projector's power state when known."""

    scene: str
    state: str | None
    message: str


BUILTIN_SCENES: dict[str, str] = {
    "on": "power on: plug off, wait, plug on, poll the liveness port until on",
    "off": "power off: the off key (default 'power'), confirmed by the liveness port",
    "volume-up": "volume up (volume_steps presses)",
    "volume-down": "volume down (volume_steps presses)",
    "volume-mute": "mute / unmute",
    "play-pause": "play / pause (the OK key)",
}


class Remote:
    """Runs scenes against a projector and a smart plug built from a Config.

    The projector and the plug are created on first use, so commands that do
    not need them run without a host or python-miio. `sleep` and `clock` are
    injectable for tests; progress lines go to `out`.
    """

    def __init__(
        self,
        config: Config,
        *,
        projector: Projector | None = None,
        plug: Plug | None = None,
        out: TextIO | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        resolver: Callable[..., Any] = socket.getaddrinfo,
    ):
        self.config = config
        self._projector = projector
        self._plug = plug
        self._out = out
        self._sleep = sleep
        self._clock = clock
        self._resolver = resolver
        self._custom = {
            name: [_parse_step(step, name) for step in steps]
            for name, steps in config.scenes.custom
        }

    @property
    def projector(self) -> Projector:
        """The projector client, created from [projector] on first use."""
        if self._projector is None:
            self._projector = Projector.from_config(
                self.config.projector, resolver=self._resolver, sleep=self._sleep
            )
        return self._projector

    @property
    def plug(self) -> Plug:
        """The smart plug, created from [plug] on first use."""
        if self._plug is None:
            self._plug = make_plug(self.config.plug, self._out)
        return self._plug

    def scenes(self) -> dict[str, str]:
        """Scene name -> description, built-in first."""
        custom = {
            name: "custom: " + ", ".join(steps)
            for name, steps in self.config.scenes.custom
        }
        return {**BUILTIN_SCENES, **custom}

    def has_scene(self, name: str) -> bool:
        """Whether `name` is a built-in or configured scene."""
        return name in BUILTIN_SCENES or name in self._custom

    def run(self, name: str) -> SceneResult:
        """Run scene `name`; UsageError listing valid scenes if unknown."""
        if not self.has_scene(name):
            raise UsageError(
                f"unknown scene {name!r}; valid scenes: {', '.join(self.scenes())}"
            )
        steps = self.config.scenes.volume_steps
        if name == "on":
            return self.power_on()
        if name == "off":
            return self.power_off()
        if name == "volume-up":
            return self._keys(name, ["volume_up"] * steps)
        if name == "volume-down":
            return self._keys(name, ["volume_down"] * steps)
        if name == "volume-mute":
            return self._keys(name, ["mute"])
        if name == "play-pause":
            return self._keys(name, ["ok"])
        return self._custom_scene(name)

    def power_on(self) -> SceneResult:
        """Plug off, wait `plug_off_wait_s`, plug on, poll status until on."""
        timings = self.config.timings
        projector, plug = self.projector, self.plug
        state = projector.status()
        if state == "on":
            return SceneResult("on", "on", "projector is already on; plug not cycled")
        self._call_plug(plug, on=False)
        if plug.dry_run:
            self._say(
                f"dry-run: would wait {timings.plug_off_wait_s:g} s, then switch the "
                "plug on and poll the projector"
            )
            self._call_plug(plug, on=True)
            return SceneResult("on", state, "dry-run: nothing was switched")
        self._say(f"plug off; waiting {timings.plug_off_wait_s:g} s")
        self._sleep(timings.plug_off_wait_s)
        try:
            self._call_plug(plug, on=True)
        except PlugError as exc:
            raise PlugError(
                f"{exc} -- the plug may have been left OFF: switch it on by hand"
            ) from None
        if state == "unknown":
            return SceneResult(
                "on",
                "unknown",
                "plug power-cycled; this model does not open its status port "
                f"{projector.status_port}, so power-on cannot be confirmed",
            )
        self._say(
            f"plug on; waiting up to {timings.boot_timeout_s:g} s for TCP port "
            f"{projector.status_port}"
        )
        state, elapsed = self._wait(lambda s: s == "on", timings.boot_timeout_s)
        if state != "on":
            raise RemoteTimeout(
                f"projector at {projector.address} did not answer on TCP port "
                f"{projector.status_port} within {timings.boot_timeout_s:g} s of the "
                "power cycle; is 'power on with AC' enabled on the projector?"
            )
        message = f"projector is on ({elapsed:.1f} s after plug on)"
        return SceneResult("on", "on", message)

    def power_off(self) -> SceneResult:
        """Send the off key and confirm with status(); resend while still on."""
        cfg = self.config.scenes
        timeout = self.config.timings.off_timeout_s
        projector = self.projector
        state = projector.status()
        if state == "off":
            return SceneResult("off", "off", "projector is already off; nothing sent")
        for _ in range(cfg.off_resends + 1):
            projector.key(cfg.off_key)
            if state == "unknown":
                return SceneResult(
                    "off",
                    "unknown",
                    f"sent {cfg.off_key!r}; this model does not open its status port "
                    f"{projector.status_port}, so power-off cannot be confirmed",
                )
            self._say(f"sent {cfg.off_key!r}; waiting up to {timeout:g} s for standby")
            state, _ = self._wait(lambda s: s != "on", timeout)
            if state != "on":
                return SceneResult("off", state, "projector is off (standby)")
        raise RemoteTimeout(
            f"sent {cfg.off_key!r} {cfg.off_resends + 1} time(s), but the projector at "
            f"{projector.address} still answers on TCP port {projector.status_port} "
            f"after {timeout:g} s each"
        )

    def _keys(self, scene: str, keys: list[str]) -> SceneResult:
        for i, name in enumerate(keys):
            if i:
                self._sleep(self.config.timings.key_interval_s)
            self.projector.key(name)
        return SceneResult(scene, None, f"sent {', '.join(keys)}")

    def _custom_scene(self, name: str) -> SceneResult:
        done = []
        for i, (kind, arg) in enumerate(self._custom[name]):
            if kind == "wait":
                self._sleep(arg)
                continue
            if i and self._custom[name][i - 1][0] != "wait":
                self._sleep(self.config.timings.key_interval_s)
            if kind == "key":
                self.projector.key(arg)
            else:
                self.projector.advance(arg)
            done.append(arg if kind == "key" else f"advance:{arg}")
        return SceneResult(name, None, f"sent {', '.join(done)}")

    def _call_plug(self, plug: Plug, *, on: bool) -> None:
        """Switch the plug, retrying `[plug] retries` times on PlugError."""
        cfg = self.config.plug
        for attempt in range(cfg.retries + 1):
            try:
                if on:
                    plug.on()
                else:
                    plug.off()
                return
            except PlugError:
                if attempt == cfg.retries:
                    raise
                self._sleep(cfg.retry_interval_s)

    def _wait(self, done: Callable[[str], bool], timeout: float) -> tuple[str, float]:
        """Poll status() every poll_interval_s until `done(state)` or `timeout`."""
        interval = self.config.timings.poll_interval_s
        start = self._clock()
        while True:
            state = self.projector.status()
            elapsed = self._clock() - start
            if done(state) or elapsed >= timeout:
                return state, elapsed
            self._sleep(min(interval, timeout - elapsed))

    def _say(self, message: str) -> None:
        out = self._out or sys.stdout
        print(message, file=out, flush=True)


# --------------------------------------------------------------------------
# HTTP endpoint for a home-automation hub
# --------------------------------------------------------------------------


class SceneServer(http.server.ThreadingHTTPServer):
    """``POST /scene/<name>`` runs a scene; every request needs the token.

    Also ``GET /scenes`` (names and descriptions) and ``GET /status``. The token
    is sent as ``Authorization: Bearer <token>`` or ``X-Token: <token>``. Scenes
    run one at a time; a request during a running scene gets 409.
    """

    daemon_threads = True

    def __init__(
        self,
        remote: Remote,
        token: str,
        address: str = "127.0.0.1",
        port: int = SERVE_PORT,
        log: TextIO | None = None,
    ):
        self.remote = remote
        self.token = check_token(token).encode()
        self.log = log
        self.scene_lock = threading.Lock()
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ConfigError(
                f"[serve] address must be an IP address such as 127.0.0.1, got "
                f"{address!r}"
            ) from None
        if ":" in address:
            self.address_family = socket.AF_INET6
        try:
            super().__init__((address, port), _SceneHandler)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {address}:{port}: {exc.strerror or exc}"
            ) from None

    @property
    def url(self) -> str:
        """The base URL the server listens on."""
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"


def check_token(token: str | None) -> str:
    """The shared secret, which must be at least MIN_TOKEN_LENGTH characters."""
    if not token or len(token.strip()) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"serve needs a shared-secret token of at least {MIN_TOKEN_LENGTH} "
            f"characters: set {TOKEN_ENV} or [serve] token"
        )
    return token.strip()


class _SceneHandler(http.server.BaseHTTPRequestHandler):
    """Request handler of SceneServer."""

    server: SceneServer
    server_version = "xgimi-remote"
    sys_version = ""
    timeout = 10

    def do_POST(self):  # noqa: N802 - http.server naming
        self._handle("POST")

    def do_GET(self):  # noqa: N802
        self._handle("GET")

    def do_HEAD(self):  # noqa: N802
        self._handle("HEAD")

    def do_PUT(self):  # noqa: N802
        self._handle("PUT")

    def do_DELETE(self):  # noqa: N802
        self._handle("DELETE")

    def do_PATCH(self):  # noqa: N802
        self._handle("PATCH")

    def _handle(self, method: str) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return self._reply(method, 400, {"error": "bad Content-Length"})
        if length < 0 or length > MAX_REQUEST_BODY:
            self.close_connection = True
            return self._reply(method, 413, {"error": "request body too large"})
        if length:
            self.rfile.read(length)
        if not self._authorized():
            return self._reply(
                method,
                401,
                {"error": "missing or bad token"},
                {"WWW-Authenticate": 'Bearer realm="xgimi-remote"'},
            )
        path = urllib.parse.urlsplit(self.path).path
        remote = self.server.remote
        match = re.fullmatch(r"/scene/([^/]+)", path)
        if match:
            if method != "POST":
                allow = {"Allow": "POST"}
                return self._reply(method, 405, {"error": "use POST"}, allow)
            name = urllib.parse.unquote(match.group(1))
            if not remote.has_scene(name):
                valid = list(remote.scenes())
                return self._reply(
                    method, 404, {"error": f"unknown scene {name!r}", "scenes": valid}
                )
            return self._run_scene(method, name)
        if path in ("/scenes", "/status"):
            if method not in ("GET", "HEAD"):
                return self._reply(method, 405, {"error": "use GET"}, {"Allow": "GET"})
            if path == "/scenes":
                return self._reply(method, 200, {"scenes": remote.scenes()})
            try:
                state = remote.projector.status()
            except RemoteError as exc:
                return self._reply(method, 502, {"ok": False, "error": str(exc)})
            return self._reply(method, 200, {"state": state})
        return self._reply(method, 404, {"error": f"no endpoint {path!r}"})

    def _run_scene(self, method: str, name: str) -> None:
        lock = self.server.scene_lock
        if not lock.acquire(blocking=False):
            return self._reply(method, 409, {"error": "another scene is running"})
        try:
            result = self.server.remote.run(name)
        except RemoteError as exc:
            self.log_message("scene %s failed: %s", name, exc)
            body = {"ok": False, "scene": name, "error": str(exc)}
            return self._reply(method, 502, body)
        except Exception as exc:  # Never leak a traceback to the hub.
            self.log_message("scene %s crashed: %s: %s", name, type(exc).__name__, exc)
            return self._reply(method, 500, {"ok": False, "error": "internal error"})
        finally:
            lock.release()
        return self._reply(method, 200, {"ok": True, **result._asdict()})

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        if header[:7].lower() == "bearer ":
            candidate = header[7:].strip()
        else:
            candidate = self.headers.get("X-Token", "").strip()
        return hmac.compare_digest(candidate.encode(), self.server.token)

    def _reply(
        self, method: str, code: int, body: dict, headers: dict | None = None
    ) -> None:
        data = (json.dumps(body, ensure_ascii=False) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - base name
        log = self.server.log
        if log is not None:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            line = f"{stamp} {self.address_string()} {format % args}"
            print(line, file=log, flush=True)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; global flags are accepted before or after the command."""
    parser = argparse.ArgumentParser(
        prog="xgimi_remote.py",
        description="Control an XGIMI projector over the LAN; smart-plug power-on.",
        epilog="Configuration: ~/.config/xgimi-remote.toml (see docs/xgimi_remote.md).",
    )
    _add_common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        _add_common(cmd, suppress=True)
        return cmd

    command("on", "power on by power-cycling the smart plug")
    command("off", "power off with the off key, confirmed by the liveness port")
    command("status", "print on, off or unknown (TCP connect to the status port)")
    command("scenes", "list the scenes")
    command("keys", "list key and advance-command names")
    command("play-pause", "play / pause (the OK key)")
    cmd = command("key", "send key presses (UDP 16735)")
    cmd.add_argument("names", nargs="+", metavar="NAME", help="key name(s)")
    cmd = command("advance", "send an advance command (UDP 16750)")
    cmd.add_argument("name", metavar="NAME")
    cmd = command("volume", "volume up, down or mute")
    cmd.add_argument("direction", choices=("up", "down", "mute"))
    cmd = command("scene", "run a scene by name (built-in or [scenes.custom])")
    cmd.add_argument("name", metavar="NAME")
    cmd = command("serve", "HTTP endpoint: POST /scene/<name> with a token")
    cmd.add_argument("--address", help="listen address (default 127.0.0.1)")
    cmd.add_argument("--port", type=int, help=f"listen port (default {SERVE_PORT})")
    return parser


def _add_common(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Global flags; on sub-commands they default to SUPPRESS so as not to clobber."""
    default = argparse.SUPPRESS if suppress else None
    add = parser.add_argument
    add("--config", metavar="PATH", default=default, help="TOML configuration file")
    add("--host", default=default, help="projector IP address or host name")
    add("--key-port", type=int, default=default, help=f"default {KEY_PORT}")
    add("--advance-port", type=int, default=default, help=f"default {ADVANCE_PORT}")
    add("--status-port", type=int, default=default, help=f"default {STATUS_PORT}")
    add("--status-timeout", type=float, default=default, metavar="SECONDS")
    add("--retries", type=int, default=default, help="extra UDP send attempts")
    add(
        "--dry-run",
        action="store_true",
        default=default,
        help="use the dry-run plug backend",
    )
    add("--debug", action="store_true", default=default, help="show tracebacks")


def config_from_args(args: argparse.Namespace) -> Config:
    """Load the configuration file and apply the command-line overrides."""
    config = load_config(args.config)
    overrides = {
        "host": args.host,
        "key_port": args.key_port,
        "advance_port": args.advance_port,
        "status_port": args.status_port,
        "status_timeout_s": args.status_timeout,
        "udp_retries": args.retries,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    projector = dataclasses.replace(config.projector, **overrides)
    plug = config.plug
    if args.dry_run:
        plug = dataclasses.replace(plug, backend="dry-run")
    serve = config.serve
    if args.command == "serve":
        serve_overrides = {"address": args.address, "port": args.port}
        serve_overrides = {k: v for k, v in serve_overrides.items() if v is not None}
        serve = dataclasses.replace(serve, **serve_overrides)
    return dataclasses.replace(config, projector=projector, plug=plug, serve=serve)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 failure, 2 usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage and one error line.
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return _dispatch(args)
    except RemoteError as exc:
        message = " ".join(str(exc).split())
        print(f"xgimi_remote: error: {message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("xgimi_remote: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if getattr(args, "debug", None):
            raise
        message = " ".join(f"{type(exc).__name__}: {exc}".split())
        print(
            f"xgimi_remote: internal error: {message} (rerun with --debug for a "
            "traceback)",
            file=sys.stderr,
        )
        return 70


def _dispatch(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    remote = Remote(config)
    command = args.command
    if command == "scenes":
        width = max(len(name) for name in remote.scenes())
        for name, description in remote.scenes().items():
            print(f"{name:<{width}}  {description}")
        return 0
    if command == "keys":
        print("keys:", ", ".join(f"{k} ({c})" for k, c in ALL_KEY_CODES.items()))
        print("aliases:", ", ".join(f"{a}={k}" for a, k in KEY_ALIASES.items()))
        print("advance commands:", ", ".join(MODEL_KEY_CODES))
        return 0
    if command == "status":
        print(remote.projector.status())
        return 0
    if command == "key":
        for name in args.names:  # Validate every name before sending any.
            key_name(name)
        result = remote._keys("key", list(args.names))
        print(result.message)
        return 0
    if command == "advance":
        remote.projector.advance(args.name)
        print(f"sent advance:{advance_name(args.name)}")
        return 0
    if command == "serve":
        return _serve(remote, config)
    scene = {
        "volume": f"volume-{getattr(args, 'direction', '')}",
        "scene": getattr(args, "name", ""),
    }.get(command, command)
    print(remote.run(scene).message)
    return 0


def _serve(remote: Remote, config: Config) -> int:
    token = check_token(os.environ.get(TOKEN_ENV) or config.serve.token)
    _ = remote.projector  # Fail on a bad host now, not on the first request.
    server = SceneServer(
        remote, token, config.serve.address, config.serve.port, log=sys.stderr
    )
    remote._out = sys.stderr
    print(f"serving scenes on {server.url} (POST /scene/<name>; Ctrl-C stops)")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
