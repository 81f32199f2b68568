"""Keys-off mode is local only, by Ollama's rules: without keys, a request whose `Host` does not
name this machine (allowedHostsMiddleware, server/routes.go) or whose browser `Origin` is
neither the page's own nor a local one (OLLAMA_ORIGINS' defaults, envconfig/config.go, checked
as gin-contrib/cors does) is refused as Ollama refuses it: 403 with no body. That stops other
web sites' pages (CSRF) and DNS-rebinding pages from using a server that trusts its caller.
ALLOWED_HOSTS and CORS_ORIGINS add hosts and origins. With keys on, the key is the authority."""
import ipaddress
import socket
from fnmatch import fnmatchcase
from functools import lru_cache

from flask import abort, current_app, request

# envconfig.AllowedOrigins: local pages on any port, and desktop apps' schemes. Browser
# extensions are not among them (Ollama's FAQ: list chrome-extension://*, moz-extension://*,
# safari-web-extension://* in OLLAMA_ORIGINS): here they go in CORS_ORIGINS.
LOCAL_ORIGINS = tuple(f"{scheme}://{host}{port}"
                      for host in ("localhost", "127.0.0.1", "0.0.0.0")
                      for scheme in ("http", "https") for port in ("", ":*")) + (
    "app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*")
LOCAL_SUFFIXES = (".localhost", ".local", ".internal")  # allowedHost's local top-level domains
PRIVATE = tuple(ipaddress.ip_network(n) for n in  # Go's netip.Addr.IsPrivate
                ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))


def refuse_foreign():
    """Abort with Ollama's 403 unless the request comes from this machine or its page."""
    host, origin = request.host, request.headers.get("Origin", "")
    if not origin_allowed(origin, host, _listed(current_app.config["CORS_ORIGINS"])) or \
            not host_allowed(host, _hosts(current_app.config["ALLOWED_HOSTS"])):
        abort(current_app.response_class(status=403))


def origin_allowed(origin, host, listed=()):
    """gin-contrib/cors: no Origin, or the page's own (http or https on this Host), or one of
    CORS_ORIGINS and the local defaults (exact, or with one `*` wildcard)."""
    if not origin or origin in (f"http://{host}", f"https://{host}"):
        return True
    return any(fnmatchcase(origin, allowed) for allowed in (*listed, *LOCAL_ORIGINS))


def host_allowed(header, listed=()):
    """allowedHostsMiddleware: an address of this machine (loopback, private, unspecified, or
    one of its own), localhost, its hostname, a name under .localhost, .local or .internal,
    or one of ALLOWED_HOSTS (`*`: any)."""
    name = hostname(header)
    if name in listed or "*" in listed:
        return True
    address = _address(name)
    if address is None:
        return name in ("", "localhost", socket.gethostname().lower()) or \
            name.endswith(LOCAL_SUFFIXES)
    return (address.is_loopback or address.is_unspecified
            or any(address in network for network in PRIVATE) or str(address) in _own_addresses())


def loopback_bind(bind):
    """Whether a server bound there ("host:port", "[::1]:port", "unix:path") is reachable from
    this machine only."""
    if bind.startswith("unix:"):
        return True
    name = hostname(bind)
    address = _address(name)
    return name == "localhost" or (address is not None and address.is_loopback)


def hostname(header):
    """The host of "host", "host:port", "[v6]" or "[v6]:port", lowercased, without brackets."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.split(":")[0] if header.count(":") == 1 else header


def _address(name):
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return None
    return getattr(address, "ipv4_mapped", None) or address  # as Go unmaps ::ffff:a.b.c.d


def _own_addresses():
    """This machine's addresses as its name resolves (Ollama's isLocalIP lists interfaces)."""
    try:
        found = socket.getaddrinfo(socket.gethostname(), None)
    except OSError:
        return set()
    return {info[4][0].lower() for info in found}


@lru_cache(maxsize=8)
def _listed(setting):
    return tuple(part.strip().rstrip("/") for part in setting.split(",") if part.strip())


@lru_cache(maxsize=8)
def _hosts(setting):
    return tuple(hostname(part) for part in _listed(setting))
