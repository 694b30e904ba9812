"""Addresses, host files and environment pairs of a distributed job.

MXNet's parameter-server nodes (ps-lite) find each other through environment
variables: the scheduler listens on DMLC_PS_ROOT_URI:DMLC_PS_ROOT_PORT, and
every server and worker listens on DMLC_NODE_HOST, or on the address of the
interface DMLC_INTERFACE names, or else on the first interface that is not
loopback. MXNet 1.9.1's tracker guesses the scheduler's address the same way
(the first interface), whatever was asked for; here the address is decided once,
from what was asked, and handed to every process.
"""
import fcntl
import ipaddress
import socket
import struct

from ..cli import UserError

LOOPBACK = "127.0.0.1"
_SIOCGIFADDR = 0x8915  # Linux ioctl: the IPv4 address of an interface


def interface_address(name):
    """The IPv4 address of network interface `name` (as ps-lite's GetIP reads it)."""
    known = [n for _, n in socket.if_nameindex()]
    if name not in known:
        raise UserError(f"DMLC_INTERFACE / --interface {name!r}: no such network interface; "
                        f"valid: {', '.join(known)}")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            packed = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except OSError:
            raise UserError(f"--interface {name}: it has no IPv4 address") from None
    return socket.inet_ntoa(packed[20:24])


def check_address(text):
    """An IPv4 address or host name that resolves; returns the IPv4 address."""
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        pass
    try:
        return socket.gethostbyname(text)
    except OSError:
        raise UserError(f"--host {text}: not an IPv4 address, and the name does not resolve") from None


def scheduler_address(launcher, host=None, interface=None):
    """The address the scheduler (and, for --launcher local, every process) binds to.

    --host wins, then --interface; with neither, a local job stays on 127.0.0.1
    and any other job uses the address of this machine's name.
    """
    if host:
        return check_address(host)
    if interface:
        return interface_address(interface)
    if launcher == "local":
        return LOOPBACK
    return check_address(socket.getfqdn())


def free_port(address):
    """A TCP port free on `address` now (the scheduler binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, 0))
        except OSError as exc:
            raise UserError(f"--host {address}: cannot listen on it ({exc.strerror}); use an address "
                            f"of this machine") from None
        return sock.getsockname()[1]


def env_pairs(pairs, flag):
    """['NAME:value', ...] (MXNet launch.py's --env-worker form) -> {NAME: value}."""
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition(":")
        if not sep or not name or not (name[0].isalpha() or name[0] == "_") \
                or not all(c.isalnum() or c == "_" for c in name):
            raise UserError(f"{flag} {pair!r}: expected NAME:value, e.g. OMP_NUM_THREADS:2")
        env[name] = value
    return env


def read_hostfile(path):
    """[(host, ssh port), ...] from a host file: one 'host', 'host:port' or 'host slots=N' a line."""
    try:
        with open(path) as lines:
            entries = [line.split("#")[0].strip() for line in lines]
    except OSError as exc:
        raise UserError(f"-H {path}: cannot read it ({exc.strerror})") from None
    hosts = []
    for entry in filter(None, entries):
        host, _, port = entry.split()[0].partition(":")
        if port and not port.isdigit():
            raise UserError(f"-H {path}: bad line {entry!r}; expected host, host:port or host slots=N")
        hosts.append((host, port or "22"))
    if not hosts:
        raise UserError(f"-H {path}: no host in it")
    return hosts
