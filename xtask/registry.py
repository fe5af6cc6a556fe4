#!/usr/bin/env python3
"""A small cargo registry for the release round trip (`cargo xtask roundtrip`).

It speaks what cargo needs of a registry, and nothing more:

- the sparse index: `GET /index/config.json` and `GET /index/<prefix>/<name>`
  (one JSON line per version; 404 for a crate it does not hold);
- publishing: `PUT /api/v1/crates/new` (cargo's body: a little-endian u32 and
  the JSON metadata, a little-endian u32 and the `.crate` file), which turns
  the metadata into an index line (`version_req` -> `req`, a renamed
  dependency's `explicit_name_in_toml` -> `name` with `package`, the
  `registry` of a dependency from another registry such as crates.io kept,
  `dep:`/`?` features in `features2`) with the SHA-256 of the file; a version
  published twice is refused, as crates.io does;
- downloads: `GET /api/v1/crates/<name>/<version>/download`.

Only the Python standard library: nothing to install (python3 is already
needed by .ci/install). It listens on a free loopback port chosen by the
kernel and prints `listening on 127.0.0.1:PORT` as its first line. It stops by
itself when its standard input closes (the xtask that started it is gone) or
after --max-seconds.

usage: registry.py --dir DATA [--max-seconds N]
"""

import argparse
import hashlib
import http.server
import json
import os
import re
import sys
import threading
import time

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
VERSION = re.compile(r"^[0-9A-Za-z.+-]{1,64}$")


def index_path(name):
    """The sparse index's path of a crate (lowercase, by length)."""
    name = name.lower()
    if len(name) <= 2:
        return f"{len(name)}/{name}"
    if len(name) == 3:
        return f"3/{name[0]}/{name}"
    return f"{name[:2]}/{name[2:4]}/{name}"


def index_line(meta, cksum):
    """The index entry cargo expects for the publish metadata `meta`."""
    deps = []
    for dep in meta.get("deps", []):
        entry = {
            "name": dep.get("explicit_name_in_toml") or dep["name"],
            "req": dep["version_req"],
            "features": dep.get("features", []),
            "optional": dep.get("optional", False),
            "default_features": dep.get("default_features", True),
            "target": dep.get("target"),
            "kind": dep.get("kind", "normal"),
        }
        if dep.get("registry"):
            entry["registry"] = dep["registry"]
        if dep.get("explicit_name_in_toml"):
            entry["package"] = dep["name"]
        deps.append(entry)
    features, features2 = {}, {}
    for feature, enables in meta.get("features", {}).items():
        new_syntax = any(f.startswith("dep:") or "?/" in f for f in enables)
        (features2 if new_syntax else features)[feature] = enables
    line = {
        "name": meta["name"],
        "vers": meta["vers"],
        "deps": deps,
        "cksum": cksum,
        "features": features,
        "yanked": False,
        "links": meta.get("links"),
        "v": 2 if features2 else 1,
    }
    if features2:
        line["features2"] = features2
    if meta.get("rust_version"):
        line["rust_version"] = meta["rust_version"]
    return line


class Registry:
    def __init__(self, root):
        self.root = root
        self.lock = threading.Lock()
        os.makedirs(os.path.join(root, "index"), exist_ok=True)
        os.makedirs(os.path.join(root, "crates"), exist_ok=True)

    def index_file(self, name):
        return os.path.join(self.root, "index", index_path(name))

    def crate_file(self, name, version):
        return os.path.join(self.root, "crates", f"{name.lower()}-{version}.crate")

    def publish(self, body):
        """Store a crate; an error message, or None."""
        if len(body) < 4:
            return "truncated body"
        json_len = int.from_bytes(body[0:4], "little")
        meta = json.loads(body[4 : 4 + json_len])
        at = 4 + json_len
        crate_len = int.from_bytes(body[at : at + 4], "little")
        crate = body[at + 4 : at + 4 + crate_len]
        if len(crate) != crate_len:
            return "truncated crate file"
        name, version = meta.get("name", ""), meta.get("vers", "")
        if not NAME.match(name) or not VERSION.match(version):
            return f"invalid crate name or version: {name!r} {version!r}"
        with self.lock:
            path = self.index_file(name)
            lines = []
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    lines = [json.loads(l) for l in f if l.strip()]
            for old in lines:
                if old["name"] != name:
                    return f"crate name {name!r} is taken by {old['name']!r}"
                if old["vers"] == version:
                    return f"crate version `{name}@{version}` is already uploaded"
            with open(self.crate_file(name, version), "wb") as f:
                f.write(crate)
            line = index_line(meta, hashlib.sha256(crate).hexdigest())
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(line, separators=(",", ":")) + "\n")
        log(f"published {name} {version} ({crate_len} bytes, {len(line['deps'])} dependencies)")
        return None


def log(message):
    print(f"registry: {message}", file=sys.stderr, flush=True)


def handler(registry, base):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def reply(self, status, body, content_type="application/json"):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def error(self, status, detail):
            body = json.dumps({"errors": [{"detail": detail}]}).encode()
            self.reply(status, body)

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path == "/index/config.json":
                config = {
                    "dl": f"{base}/api/v1/crates/{{crate}}/{{version}}/download",
                    "api": base,
                }
                return self.reply(200, json.dumps(config).encode())
            if path.startswith("/index/"):
                name = path.rsplit("/", 1)[-1]
                if not NAME.match(name) or path != "/index/" + index_path(name):
                    return self.error(404, "not found")
                file = registry.index_file(name)
                if not os.path.exists(file):
                    return self.error(404, f"no crate {name}")
                with open(file, "rb") as f:
                    return self.reply(200, f.read(), "text/plain")
            parts = path.strip("/").split("/")
            if len(parts) == 6 and parts[:3] == ["api", "v1", "crates"] and parts[5] == "download":
                name, version = parts[3], parts[4]
                if NAME.match(name) and VERSION.match(version):
                    file = registry.crate_file(name, version)
                    if os.path.exists(file):
                        with open(file, "rb") as f:
                            return self.reply(200, f.read(), "application/octet-stream")
                return self.error(404, f"no crate file {name} {version}")
            return self.error(404, "not found")

        do_HEAD = do_GET

        def do_PUT(self):
            if self.path.split("?", 1)[0] != "/api/v1/crates/new":
                return self.error(404, "not found")
            if not self.headers.get("Authorization"):
                return self.error(403, "publishing needs a token")
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            try:
                problem = registry.publish(body)
            except (ValueError, KeyError) as e:
                problem = f"malformed publish request: {e}"
            if problem:
                log(f"refused: {problem}")
                return self.error(400, problem)
            warnings = {"invalid_categories": [], "invalid_badges": [], "other": []}
            return self.reply(200, json.dumps({"warnings": warnings}).encode())

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, help="where the index and crate files go")
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    args = parser.parse_args()
    registry = Registry(args.dir)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), None)
    port = server.server_address[1]
    server.RequestHandlerClass = handler(registry, f"http://127.0.0.1:{port}")
    server.daemon_threads = True

    def stop_when_orphaned():
        # The parent holds our stdin; EOF means it is gone.
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except OSError:
            pass
        server.shutdown()

    def stop_after_deadline():
        time.sleep(args.max_seconds)
        log(f"stopping after {args.max_seconds:.0f}s")
        server.shutdown()

    threading.Thread(target=stop_when_orphaned, daemon=True).start()
    threading.Thread(target=stop_after_deadline, daemon=True).start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
