"""OpenStack Swift: proxy, account, container and object servers, plus memcached.

Everything lives under DIR/swift: ``etc`` (configs and rings written here; Swift
ships no sample configs), ``srv/node/sdb1`` (the one device, a plain directory),
and the venv under DIR/venvs/swift.  Auth is tempauth (accounts ``AUTH_*``, users
below, fernet tokens) and s3api; when the keystone service is running at start
time, a second proxy accepts Keystone tokens (authtoken + keystoneauth, accounts
``KEY_<project id>``) and an ``object-store`` endpoint is put in its catalog.
Ports are kept from one start to the next when they are still free (they are
baked into the rings, rebuilt each time); the objects stay on disk between runs.
"""

from __future__ import annotations

import base64
import json
import pathlib
import secrets
import socket

from tools.stack.base import Context, StackError, pid_alive, port_free

NAME = "swift"
REQUIRES: list[str] = []
# Start after keystone when both are started together, so Keystone auth is on.
AFTER = ["keystone"]
PACKAGES = ["swift>=2.35", "python-swiftclient>=4", "keystonemiddleware>=10"]
SERVERS = ("account", "container", "object")
# tempauth users: account:user -> (key, groups)
USERS = {
    "test:tester": ("testing", ".admin"),
    "test2:tester2": ("testing2", ".admin"),
    "test:tester3": ("testing3", ""),
}
KEYSTONE_PREFIX = "KEY_"

# Run by the venv's python: build the three rings in one process (the
# swift-ring-builder CLI costs a process per step).
RING_SCRIPT = """
import json, sys
from swift.common.ring import RingBuilder
etc, ports = sys.argv[1], json.loads(sys.argv[2])
for name, port in ports.items():
    b = RingBuilder(8, 1, 1)
    b.add_dev({"id": 0, "region": 1, "zone": 1, "ip": "127.0.0.1", "port": port,
               "device": "sdb1", "weight": 1.0, "meta": ""})
    b.rebalance()
    b.save(f"{etc}/{name}.builder")
    b.get_ring().save(f"{etc}/{name}.ring.gz")
"""

# Run by the venv's python: (re)register Swift's endpoint in Keystone's catalog.
CATALOG_SCRIPT = """
import json, sys
from keystoneauth1 import session
from keystoneauth1.identity import v3
from keystoneclient.v3 import client
req = json.loads(sys.stdin.read())
a = req["admin"]
auth = v3.Password(auth_url=a["auth_url"], username=a["username"], password=a["password"],
                   project_name=a["project_name"], user_domain_name=a["user_domain_name"],
                   project_domain_name=a["project_domain_name"])
ks = client.Client(session=session.Session(auth=auth), interface="public")
service = next((s for s in ks.services.list() if s.type == "object-store"), None)
if service is None:
    service = ks.services.create(name="swift", type="object-store")
if req["region"] not in {r.id for r in ks.regions.list()}:
    ks.regions.create(id=req["region"])
for old in ks.endpoints.list(service=service, region_id=req["region"]):
    ks.endpoints.delete(old)
for interface in ("public", "internal", "admin"):
    ks.endpoints.create(service=service, url=req["url"], interface=interface,
                        region=req["region"])
"""


def _venv(ctx: Context) -> pathlib.Path:
    return ctx.venv(NAME, PACKAGES)


def install(ctx: Context) -> None:
    _venv(ctx)


def _ini(sections: dict[str, dict[str, object]]) -> str:
    out = []
    for section, options in sections.items():
        out.append(f"[{section}]")
        out.extend(f"{k} = {v}" for k, v in options.items())
        out.append("")
    return "\n".join(out)


def _keystone(ctx: Context) -> dict | None:
    """The keystone record when that service is up, else None."""
    record = ctx.state.get("keystone")
    if not record:
        return None
    started = record.get("started", {})
    if not all(pid_alive(p, started.get(str(p))) for p in record.get("pids", [])):
        return None
    return record


def _proxy_conf(etc, port, cache_port, ks: dict | None) -> str:
    # Two proxies over the same servers: one with tempauth only, one with
    # Keystone only.  One proxy with both made authtoken send every tempauth
    # token to Keystone for validation (it does not cache failures), which cut
    # small-object request rates about tenfold.
    # s3api rides on the tempauth proxy only (with keystoneauth it needs s3token).
    auth = ["authtoken", "keystoneauth"] if ks else ["s3api", "tempauth"]
    pipeline = [
        "catch_errors", "gatekeeper", "healthcheck", "proxy-logging", "cache",
        "listing_formats", "bulk", *auth, "copy", "slo", "dlo",
        "versioned_writes", "symlink", "proxy-logging", "proxy-server",
    ]  # fmt: skip
    tempauth: dict[str, object] = {"use": "egg:swift#tempauth", "token_life": 86400}
    for user, (key, groups) in USERS.items():
        account, name = user.split(":")
        tempauth[f"user_{account}_{name}"] = f"{key} {groups}".strip()
    # With a fernet key tempauth's tokens need no memcached round trip.
    tempauth["fernet_key_k1"] = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    tempauth["active_fernet_key_id"] = "k1"
    sections: dict[str, dict[str, object]] = {
        "DEFAULT": {
            "bind_ip": "127.0.0.1",
            "bind_port": port,
            "workers": 0,
            "user": "root",
            "swift_dir": etc,
            "log_level": "WARNING",
        },
        "pipeline:main": {"pipeline": " ".join(pipeline)},
        "app:proxy-server": {"use": "egg:swift#proxy", "account_autocreate": "true"},
        "filter:catch_errors": {"use": "egg:swift#catch_errors"},
        "filter:gatekeeper": {"use": "egg:swift#gatekeeper"},
        "filter:healthcheck": {"use": "egg:swift#healthcheck"},
        "filter:proxy-logging": {"use": "egg:swift#proxy_logging"},
        "filter:cache": {
            "use": "egg:swift#memcache",
            "memcache_servers": f"127.0.0.1:{cache_port}",
        },
        "filter:listing_formats": {"use": "egg:swift#listing_formats"},
        "filter:bulk": {"use": "egg:swift#bulk"},
        "filter:s3api": {"use": "egg:swift#s3api", "location": "us-east-1"},
        "filter:tempauth": tempauth,
        "filter:copy": {"use": "egg:swift#copy"},
        "filter:slo": {"use": "egg:swift#slo"},
        "filter:dlo": {"use": "egg:swift#dlo"},
        "filter:versioned_writes": {"use": "egg:swift#versioned_writes"},
        "filter:symlink": {"use": "egg:swift#symlink"},
    }
    if ks:
        admin = ks["admin"]
        sections["filter:authtoken"] = {
            "paste.filter_factory": "keystonemiddleware.auth_token:filter_factory",
            "www_authenticate_uri": ks["auth_url"],
            "auth_url": ks["auth_url"],
            "auth_type": "password",
            "username": admin["username"],
            "password": admin["password"],
            "project_name": admin["project_name"],
            "user_domain_name": admin["user_domain_name"],
            "project_domain_name": admin["project_domain_name"],
            "delay_auth_decision": "true",  # keystoneauth answers 401/403 itself
            # Swift's own memcache client (the cache filter), not python-memcached.
            "cache": "swift.cache",
            "include_service_catalog": "false",
        }
        sections["filter:keystoneauth"] = {
            "use": "egg:swift#keystoneauth",
            "reseller_prefix": KEYSTONE_PREFIX,
            "operator_roles": "admin, member",
            "reseller_admin_role": "ResellerAdmin",
        }
    return _ini(sections)


def _server_conf(kind: str, etc, devices, port: int) -> str:
    return _ini(
        {
            "DEFAULT": {
                "devices": devices,
                "mount_check": "false",
                "disable_fallocate": "true",
                "bind_ip": "127.0.0.1",
                "bind_port": port,
                "workers": 0,
                "user": "root",
                "swift_dir": etc,
                "log_level": "WARNING",
            },
            "pipeline:main": {"pipeline": f"healthcheck {kind}-server"},
            f"app:{kind}-server": {"use": f"egg:swift#{kind}"},
            "filter:healthcheck": {"use": "egg:swift#healthcheck"},
        }
    )


def _ports(ctx: Context, top: pathlib.Path) -> dict[str, int]:
    """The ports of the last start when they are all free again, else new ones.

    A restart (say, to turn Keystone auth on) then keeps the URLs that running
    tests and other sessions hold.
    """
    path = top / "ports.json"
    kinds = (*SERVERS, "proxy", "proxy-keystone", "memcached")
    try:
        ports = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        ports = {}
    if set(ports) != set(kinds) or not all(port_free(p) for p in ports.values()):
        ports = {}
        while len(set(ports.values())) != len(kinds):
            ports = {kind: ctx.free_port() for kind in kinds}
    path.write_text(json.dumps(ports))
    return ports


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def start(ctx: Context) -> dict:
    venv = _venv(ctx)
    top = ctx.service_dir(NAME)
    etc, devices = top / "etc", top / "srv" / "node"
    etc.mkdir(exist_ok=True)
    (devices / "sdb1").mkdir(parents=True, exist_ok=True)
    hashes = etc / "swift.conf"
    if not hashes.exists():
        # The hash prefix/suffix place objects on disk: fixed for the life of the data.
        hashes.write_text(
            _ini(
                {
                    "swift-hash": {
                        "swift_hash_path_prefix": secrets.token_hex(8),
                        "swift_hash_path_suffix": secrets.token_hex(8),
                    },
                    "storage-policy:0": {"name": "Policy-0", "default": "yes"},
                }
            )
        )
    ports = _ports(ctx, top)
    proxy_port, cache_port = ports.pop("proxy"), ports.pop("memcached")
    ks_port = ports.pop("proxy-keystone")
    ctx.run([venv / "bin" / "python", "-c", RING_SCRIPT, etc, json.dumps(ports)])
    ks = _keystone(ctx)
    (etc / "proxy-server.conf").write_text(_proxy_conf(etc, proxy_port, cache_port, None))
    proxies = [("proxy", "proxy-server.conf", proxy_port)]
    if ks:
        conf = _proxy_conf(etc, ks_port, cache_port, ks)
        (etc / "proxy-keystone.conf").write_text(conf)
        proxies.append(("proxy-keystone", "proxy-keystone.conf", ks_port))
    for kind, port in ports.items():
        (etc / f"{kind}-server.conf").write_text(_server_conf(kind, etc, devices, port))

    pids, logs = [], {}
    log = logs["memcached"] = ctx.log("swift-memcached")
    cmd = ["memcached", "-l", "127.0.0.1", "-p", cache_port, "-U", "0", "-u", "root", "-m", "64"]
    pids.append(ctx.spawn(cmd, log))
    servers = [(k, etc / f"{k}-server.conf", f"swift-{k}-server") for k in SERVERS]
    servers += [(k, etc / conf, "swift-proxy-server") for k, conf, _ in proxies]
    for kind, conf, program in servers:
        log = logs[kind] = ctx.log(f"swift-{kind}")
        # -v: log to the console (our log file) as well as syslog.
        pids.append(ctx.spawn([venv / "bin" / program, conf, "-v"], log))
    ctx.wait_for("memcached", lambda: _listening(cache_port), 30, logs["memcached"])
    for kind, port in (*ports.items(), *((k, p) for k, _, p in proxies)):
        url = f"http://127.0.0.1:{port}/healthcheck"
        ctx.wait_http(url, ok=lambda s: s == 200, timeout=90, log=logs[kind])
    auth_url = f"http://127.0.0.1:{proxy_port}/auth/v1.0"
    user, (key, _groups) = next(iter(USERS.items()))
    ctx.wait_http(
        auth_url,
        ok=lambda s: s == 200,
        timeout=30,
        log=logs["proxy"],
        headers={"X-Auth-User": user, "X-Auth-Key": key},
    )
    proxy_url = f"http://127.0.0.1:{proxy_port}"
    record = {
        "pids": pids,
        "auth_url": auth_url,
        "user": user,
        "key": key,
        "storage_url": f"{proxy_url}/v1/AUTH_test",
        "users": {u: {"key": k, "admin": ".admin" in g} for u, (k, g) in USERS.items()},
        "proxy_url": proxy_url,
        "proxy_port": proxy_port,
        "s3_endpoint": proxy_url,
        "s3_region": "us-east-1",
        "s3_access_key": user,
        "s3_secret_key": key,
        "memcached": f"127.0.0.1:{cache_port}",
        "etc": str(etc),
        "venv": str(venv),
        "logs": {k: str(v) for k, v in logs.items()},
    }
    if ks:
        region = ks.get("region", "RegionOne")
        ks_proxy_url = f"http://127.0.0.1:{ks_port}"
        url = f"{ks_proxy_url}/v1/{KEYSTONE_PREFIX}$(project_id)s"
        admin = dict(ks["admin"], auth_url=ks["auth_url"])
        proc = ctx.run(
            [venv / "bin" / "python", "-c", CATALOG_SCRIPT],
            input=json.dumps({"admin": admin, "region": region, "url": url}),
            check=False,
            timeout=120,
        )
        if proc.returncode != 0:
            raise StackError(f"registering swift in keystone failed:\n{proc.stderr[-2000:]}")
        record["keystone"] = {
            "auth_url": ks["auth_url"],
            "region": region,
            "reseller_prefix": KEYSTONE_PREFIX,
            "proxy_url": ks_proxy_url,
            "storage_url_template": f"{ks_proxy_url}/v1/{KEYSTONE_PREFIX}{{project_id}}",
            "operator_roles": ["admin", "member"],
            # Keystone starts with fresh state: a restarted one no longer lists us.
            "keystone_pids": ks.get("pids", []),
        }
    return record


def alive(ctx: Context, record: dict) -> bool:
    """Stale when Keystone's state differs from what this Swift was configured with.

    Started without Keystone while Keystone now runs: Keystone auth is missing.
    Configured with a Keystone that has stopped or restarted (with fresh state): its
    endpoint is gone, and authtoken cannot reach it, which fails tempauth requests
    too.  ``start swift`` then restarts Swift, on the same ports.
    """
    ks = _keystone(ctx)
    now = ks.get("pids") if ks else None
    then = record.get("keystone", {}).get("keystone_pids")
    return now == then


def stop(ctx: Context, record: dict) -> None:
    ctx.kill(record.get("pids", []), record.get("started"), timeout=15)
