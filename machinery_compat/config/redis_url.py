"""Redis URLs parsed the way Go Machinery parses them (:func:`parse_redis_url`,
:func:`parse_redis_lock_url`); see the package documentation for the forms.

TLS options (``rediss://`` only)
--------------------------------

Go Machinery reads no TLS settings from a Redis URL: a Go process uses TLS when its
``Config.TLSConfig`` is set in code, whatever the scheme, and ignores the query string.
This library turns TLS on for ``rediss://`` and reads these query parameters, with
redis-py's names (:data:`TLS_QUERY_OPTIONS`)::

    rediss://:password@redis.example:6380/0?ssl_ca_certs=/etc/ssl/redis-ca.pem
    rediss://redis.example:6380/0?ssl_ca_certs=/ca.pem&ssl_certfile=/me.pem&ssl_keyfile=/me.key

* ``ssl_ca_certs`` -- PEM file of the CAs to trust (default: the system's trust store);
  ``ssl_ca_path`` -- a directory of them (``c_rehash`` layout);
* ``ssl_certfile`` / ``ssl_keyfile`` -- a client certificate and its key (for a server with
  ``tls-auth-clients yes``); ``ssl_password`` -- the key file's passphrase (masked in logs);
* ``ssl_cert_reqs`` -- ``required`` (default), ``optional`` or ``none`` (no verification at
  all: a warning is logged);
* ``ssl_check_hostname`` -- ``true`` (default) or ``false``; the server's certificate must
  name the URL's host (an IP address needs an IP SAN).

Percent-encode ``&``, ``+``, ``#`` and ``%`` in paths. A misspelt or repeated ``ssl_*``
parameter, or one on a ``redis://`` URL, raises :class:`ConfigError` rather than falling
back to weaker settings; other parameters are ignored with a warning, as Go ignores them.
Go peers ignore the whole query, so one URL can serve both (a Go process still needs its
``TLSConfig``). For an :class:`ssl.SSLContext` instead of parameters, see
:func:`machinery_compat._redis.client_for`.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, unquote_to_bytes, urlsplit

from ..exceptions import ConfigError
from .masking import _mask_secret, _masked_repr, mask_url
from .model import _INT64_MAX, _INT64_MIN, DEFAULT_REDIS_PORT

logger = logging.getLogger(__name__)

#: Query parameters of a ``rediss://`` URL that set TLS options (redis-py's names).
TLS_QUERY_OPTIONS: Final = (
    "ssl_ca_certs",
    "ssl_ca_path",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_password",
    "ssl_cert_reqs",
    "ssl_check_hostname",
)
_CERT_REQS: Final = ("required", "optional", "none")
_BOOLS: Final = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@dataclass(frozen=True, repr=False)
class RedisTLSOptions:
    """TLS settings read from a ``rediss://`` URL's query (see the module documentation).

    The defaults verify the server's certificate against the system's CAs and check that it
    names the host. ``repr()`` masks :attr:`password`.
    """

    #: ``ssl_ca_certs``: PEM file of the CAs to trust; ``None``: the system's trust store.
    ca_certs: str | None = None
    #: ``ssl_ca_path``: a directory of CA certificates.
    ca_path: str | None = None
    #: ``ssl_certfile``: the client's certificate (PEM), for ``tls-auth-clients yes``.
    certfile: str | None = None
    #: ``ssl_keyfile``: the client certificate's key (PEM).
    keyfile: str | None = None
    #: ``ssl_password``: passphrase of :attr:`keyfile`.
    password: str | None = None
    #: ``ssl_cert_reqs``: ``required`` (default), ``optional`` or ``none``.
    cert_reqs: str = "required"
    #: ``ssl_check_hostname``: check that the certificate names the host (off when
    #: :attr:`cert_reqs` is ``none``).
    check_hostname: bool = True

    def to_redis_py_kwargs(self) -> dict[str, Any]:
        """The ``ssl_*`` keyword arguments of redis-py's ``SSLConnection``."""
        kwargs: dict[str, Any] = {
            "ssl_cert_reqs": self.cert_reqs,
            "ssl_check_hostname": self.check_hostname and self.cert_reqs != "none",
        }
        for name in ("ca_certs", "ca_path", "certfile", "keyfile", "password"):
            value = getattr(self, name)
            if value is not None:
                kwargs[f"ssl_{name}"] = value
        return kwargs

    def __repr__(self) -> str:
        return _masked_repr(self, {"password": _mask_secret})


@dataclass(frozen=True, repr=False)
class RedisURL:
    """A Redis URL parsed the way Go Machinery parses it (see :func:`parse_redis_url`).

    ``host``/``port`` are those of the first address; ``hosts`` lists every address (empty
    for a unix socket). ``password`` is ``None`` when the URL has no userinfo.
    ``tls_options`` holds the ``ssl_*`` query parameters of a ``rediss://`` URL (``None``:
    none given, the secure defaults of :class:`RedisTLSOptions`).
    """

    host: str
    port: int = DEFAULT_REDIS_PORT
    password: str | None = None
    username: str | None = None
    db: int = 0
    socket_path: str | None = None
    tls: bool = False
    hosts: tuple[tuple[str, int], ...] = ()
    tls_options: RedisTLSOptions | None = None

    @property
    def multi_host(self) -> bool:
        """True when the URL lists several addresses (Go uses a cluster/Sentinel client)."""
        return len(self.hosts) > 1

    def to_redis_py_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``redis.Redis(**kwargs)`` reaching the same server as Go.

        Credentials are sent the way Go sends them: nothing without a (non-empty) password,
        ``AUTH password`` without a user name, ``AUTH user password`` with one. For several
        addresses use :attr:`hosts` with a cluster or Sentinel client instead. ``rediss://``
        gives ``ssl=True`` and the ``ssl_*`` options of its query (:class:`RedisTLSOptions`);
        without any, redis-py's defaults apply (this library's own connections always
        verify the certificate and the host name).
        """
        if self.multi_host:
            raise ConfigError(
                "a URL with several addresses needs a cluster or Sentinel client; use .hosts"
            )
        kwargs: dict[str, Any] = {"db": self.db}
        if self.socket_path is not None:
            kwargs["unix_socket_path"] = self.socket_path
        else:
            kwargs["host"] = self.host
            kwargs["port"] = self.port
            if self.tls:
                kwargs["ssl"] = True
                if self.tls_options is not None:
                    kwargs.update(self.tls_options.to_redis_py_kwargs())
        if self.password:
            if self.username:
                kwargs["username"] = self.username
            kwargs["password"] = self.password
        return kwargs

    def __repr__(self) -> str:
        return _masked_repr(self, {"password": _mask_secret})


_REDIS_SCHEMES: Final = ("redis://", "rediss://")
_SOCKET_SCHEME: Final = "redis+socket://"
# Characters Go's net/url accepts in userinfo (validUserinfo).
_USERINFO_RE: Final = re.compile(r"[A-Za-z0-9\-._:~!$&'()*+,;=%@]*\Z")
_BAD_ESCAPE_RE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
_GO_ATOI_RE: Final = re.compile(r"[+-]?[0-9]+\Z")


def parse_redis_url(url: str, *, cluster: bool = False) -> RedisURL:
    """Parse a ``redis://``, ``rediss://`` or ``redis+socket://`` URL like Go Machinery.

    Forms (see the module documentation for details):

    * ``redis://[password@]host[:port][/db]``, ``redis://user:password@host``,
      ``redis://:password@host``, ``redis://user:@host`` -- percent-decoded like Go's
      ``net/url``; the query string is ignored (a warning is logged).
    * ``redis://[[user:]password@]h1:p1,h2:p2[/db]`` -- credentials from the first address,
      db from the last; not percent-decoded. ``cluster=True`` (Go's ``cluster_enabled`` /
      ``cluster_mode``) parses a single address this way too, as Go does.
    * ``redis+socket://[[user:]password@]/path/to/redis.sock[:/db]``.
    * ``rediss://`` sets :attr:`RedisURL.tls` (Go needs ``TLSConfig`` for TLS); its
      ``ssl_*`` query parameters set :attr:`RedisURL.tls_options` (module documentation).

    A missing port means 6379 and a missing host ``localhost``. A db that is not an integer
    means 0 (logged); a negative db raises :class:`ConfigError`, as does any other scheme.
    Results are cached, so warnings are logged once per URL.
    """
    return _parse_redis_url_cached(url, cluster)


@functools.lru_cache(maxsize=256)
def _parse_redis_url_cached(url: str, cluster: bool) -> RedisURL:
    if url.startswith(_SOCKET_SCHEME):
        return _parse_socket_url(url)
    for scheme in _REDIS_SCHEMES:
        if url.startswith(scheme):
            rest = url[len(scheme) :]
            tls = scheme == "rediss://"
            if cluster or "," in rest:
                return _parse_multi_host(url, rest.split(","), tls)
            return _parse_single_host(url, tls)
    raise ConfigError(f"not a Redis URL (redis://, rediss://, redis+socket://): {mask_url(url)}")


def parse_redis_lock_url(url: str) -> RedisURL | None:
    """Parse ``Config.lock`` as Go's ``LockFactory`` does; ``None`` means an in-process lock.

    Only ``redis://`` selects the Redis lock (``rediss://`` and everything else, ``""``
    included, give Go's in-memory lock: ``None``). Addresses are comma-separated; the password
    is everything before the last ``@`` of the first address (no user name, no decoding); the
    db is always 0 and a ``/db`` suffix is an error (Go would fail to dial it).
    """
    if not url.startswith("redis://"):
        if url.startswith(("rediss://", "redis+socket://")):
            logger.warning(
                "lock URL %s is not redis://; Go Machinery uses an in-process lock for it",
                mask_url(url),
            )
        return None
    addrs = url[len("redis://") :].split(",")
    password: str | None = None
    userinfo, sep, first = addrs[0].rpartition("@")
    if sep:
        password = userinfo
        addrs[0] = first
    hosts = []
    for addr in addrs:
        if "/" in addr or "?" in addr:
            raise ConfigError(
                f"lock URL {mask_url(url)}: Go's lock takes host:port addresses only "
                "(always db 0, no path or query)"
            )
        hosts.append(_split_host_port(addr, url))
    return RedisURL(host=hosts[0][0], port=hosts[0][1], password=password, hosts=tuple(hosts))


def _parse_single_host(url: str, tls: bool) -> RedisURL:
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise ConfigError(f"invalid Redis URL {mask_url(url)}: {e}") from None
    userinfo, sep, hostport = parts.netloc.rpartition("@")
    username: str | None = None
    password: str | None = None
    if sep:
        if not _USERINFO_RE.match(userinfo):
            raise ConfigError(
                f"invalid Redis URL {mask_url(url)}: invalid character in user name or "
                "password (percent-encode it)"
            )
        user_raw, colon, pw_raw = userinfo.partition(":")
        user = _go_unescape(user_raw, url)
        if colon:
            username = user or None
            password = _go_unescape(pw_raw, url)
        else:
            password = user  # Go: a lone userinfo is the password
    tls_options = _parse_query(parts.query, url, tls)
    host, port = _split_host_port(hostport, url)
    path = _go_unescape(parts.path, url)
    segments = path.split("/")
    db = _parse_db(segments[1], url) if len(segments) > 1 else 0
    return RedisURL(
        host=host,
        port=port,
        password=password,
        username=username,
        db=db,
        tls=tls,
        hosts=((host, port),),
        tls_options=tls_options,
    )


def _parse_query(query: str, url: str, tls: bool) -> RedisTLSOptions | None:
    """The ``ssl_*`` parameters of ``query`` (module documentation); others are ignored."""
    if not query:
        return None
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False,
                          errors="strict", max_num_fields=100)
    except ValueError as e:
        raise ConfigError(f"Redis URL {mask_url(url)}: unreadable query string ({e})") from None
    options: dict[str, str] = {}
    ignored: list[str] = []
    for key, value in pairs:
        if not key.lower().startswith("ssl"):
            ignored.append(key)
            continue
        if key not in TLS_QUERY_OPTIONS:
            raise ConfigError(
                f"Redis URL {mask_url(url)}: unknown TLS option {key!r} "
                f"(known: {', '.join(TLS_QUERY_OPTIONS)})"
            )
        if key in options:
            raise ConfigError(f"Redis URL {mask_url(url)}: TLS option {key!r} given twice")
        options[key] = value
    if ignored:
        logger.warning(
            "Redis URL %s: the query string is ignored (as by Go Machinery) but for the TLS "
            "options of rediss:// URLs (ssl_*); ignored: %s",
            mask_url(url), ", ".join(sorted(set(ignored))),
        )
    if not options:
        return None
    if not tls:
        raise ConfigError(
            f"Redis URL {mask_url(url)}: TLS options need a rediss:// URL (redis:// is plain TCP)"
        )
    cert_reqs = options.get("ssl_cert_reqs", "required").lower()
    if cert_reqs not in _CERT_REQS:
        raise ConfigError(
            f"Redis URL {mask_url(url)}: ssl_cert_reqs must be one of {', '.join(_CERT_REQS)}, "
            f"not {options['ssl_cert_reqs']!r}"
        )
    check_text = options.get("ssl_check_hostname", "true").lower()
    if check_text not in _BOOLS:
        raise ConfigError(
            f"Redis URL {mask_url(url)}: ssl_check_hostname must be true or false, "
            f"not {options['ssl_check_hostname']!r}"
        )
    for key in ("ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile"):
        if key in options and not options[key]:
            raise ConfigError(f"Redis URL {mask_url(url)}: {key} is empty")
    if ("ssl_keyfile" in options or "ssl_password" in options) and "ssl_certfile" not in options:
        raise ConfigError(
            f"Redis URL {mask_url(url)}: ssl_keyfile/ssl_password need ssl_certfile"
        )
    if cert_reqs == "none":
        logger.warning(
            "Redis URL %s: ssl_cert_reqs=none: the server's certificate is not verified "
            "(anyone on the path can read and change the traffic)", mask_url(url)
        )
    return RedisTLSOptions(
        ca_certs=options.get("ssl_ca_certs"),
        ca_path=options.get("ssl_ca_path"),
        certfile=options.get("ssl_certfile"),
        keyfile=options.get("ssl_keyfile"),
        password=options.get("ssl_password"),
        cert_reqs=cert_reqs,
        check_hostname=_BOOLS[check_text],
    )


def _parse_multi_host(url: str, addrs: list[str], tls: bool) -> RedisURL:
    # Go v1 ParseBrokers: the db comes from a "/N" suffix of the last address ...
    db = 0
    last, slash, db_text = addrs[-1].partition("/")
    if slash:
        addrs[-1] = last
        if db_text:
            db = _parse_db(db_text, url)
    # ... then NewGR: credentials are everything before the last "@" of the first address.
    username: str | None = None
    password: str | None = None
    userinfo, at, first = addrs[0].rpartition("@")
    if at:
        addrs[0] = first
        user, colon, pw = userinfo.partition(":")
        if colon:
            username = user or None
            password = pw
        else:
            password = user
    hosts = []
    for addr in addrs:
        if not addr:
            raise ConfigError(f"Redis URL {mask_url(url)}: empty address in the list")
        if "/" in addr or "@" in addr:
            raise ConfigError(
                f"Redis URL {mask_url(url)}: only the first address may carry credentials "
                "and only the last one a /db"
            )
        hosts.append(_split_host_port(addr, url))
    return RedisURL(
        host=hosts[0][0],
        port=hosts[0][1],
        password=password,
        username=username,
        db=db,
        tls=tls,
        hosts=tuple(hosts),
    )


def _parse_socket_url(url: str) -> RedisURL:
    remainder = url[len(_SOCKET_SCHEME) :]
    username: str | None = None
    password: str | None = None
    userinfo, at, after = remainder.partition("@")  # Go: the first "@"
    if at:
        user, colon, pw = userinfo.partition(":")
        if colon:
            username = user or None
            password = pw
        else:
            password = user
        remainder = after
    path, colon, db_part = remainder.partition(":")
    if not path:
        raise ConfigError(
            f"Redis socket URL should look like redis+socket://password@/path/to/file.sock:/db, "
            f"got {mask_url(url)}"
        )
    db = 0
    if colon:
        _, slash, db_text = db_part.partition("/")
        if slash and _GO_ATOI_RE.match(db_text):
            db = _parse_db(db_text, url)
        else:
            logger.warning(
                "Redis socket URL %s: cannot read a db from %r (expected :/N); using db 0",
                mask_url(url),
                ":" + db_part,
            )
    else:
        # Go quirk: without ":" the db is read from the path after its first "/".
        _, _, tail = path.partition("/")
        if _GO_ATOI_RE.match(tail):
            db = _parse_db(tail, url)
    return RedisURL(host="", password=password, username=username, db=db, socket_path=path)


def _parse_db(text: str, url: str) -> int:
    """Go's ``strconv.Atoi`` with errors mapped to db 0 (as Go does), negatives refused."""
    if not text:
        return 0
    if not _GO_ATOI_RE.match(text) or not _INT64_MIN <= int(text) <= _INT64_MAX:
        logger.warning(
            "Redis URL %s: db %r is not an integer; using db 0 as Go Machinery does",
            mask_url(url),
            text,
        )
        return 0
    db = int(text)
    if db < 0:
        raise ConfigError(f"Redis URL {mask_url(url)}: negative db {db}")
    return db


def _split_host_port(hostport: str, url: str) -> tuple[str, int]:
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise ConfigError(f"Redis URL {mask_url(url)}: missing ']' in host {hostport!r}")
        host, rest = hostport[1:end], hostport[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ConfigError(f"Redis URL {mask_url(url)}: invalid address {hostport!r}")
        port_text = rest[1:]
    else:
        host, _, port_text = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
    if any(c.isspace() or c in "/@?#[]" for c in host):
        raise ConfigError(f"Redis URL {mask_url(url)}: invalid host {host!r}")
    if ":" in host and not hostport.startswith("["):
        raise ConfigError(f"Redis URL {mask_url(url)}: write IPv6 addresses as [addr]:port")
    if not port_text:
        port = DEFAULT_REDIS_PORT
    elif port_text.isascii() and port_text.isdigit() and int(port_text) <= 65535:
        port = int(port_text)
    else:
        raise ConfigError(f"Redis URL {mask_url(url)}: invalid port {port_text!r}")
    return host or "localhost", port


def _go_unescape(text: str, url: str) -> str:
    """Percent-decode like Go's ``net/url`` (bad escapes are errors, ``+`` stays ``+``)."""
    if "%" not in text:
        return text
    if _BAD_ESCAPE_RE.search(text):
        raise ConfigError(f"Redis URL {mask_url(url)}: invalid percent-escape")
    try:
        return unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(
            f"Redis URL {mask_url(url)}: percent-escapes do not decode to UTF-8"
        ) from None

