"""Helpers of scripts/lib/venv.bash for installing with uv (stdlib only; any Python 3.11+).

``uvboot.py settings``: reads ``pip config list`` on stdin and prints the same settings as uv
options, NUL-separated, so uv installs from where pip would; ``env:NAME=value`` items are
environment settings (the certificate bundle, the timeout).

``uvboot.py pip-wheel``: prints the path of the pip wheel Python ships for ensurepip (Debian
keeps it in /usr/share/python-wheels); pip runs from it without being installed.

``uvboot.py fetch DIR [INDEX_URL]``: puts the newest uv release for this machine in DIR/bin,
straight from the package index (the wheel's binary, its sha256 checked). About 1 s, where
``pip install uv`` takes 5-15 s on a busy 2-core machine (pip's own start-up and index
scanning). Exits non-zero if it cannot; the caller then falls back to pip.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import platform
import re
import shutil
import sys
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

FLAGS = {
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraints",
    "trusted-host": "--allow-insecure-host",
}
ENVS = {"cert": "SSL_CERT_FILE", "timeout": "UV_HTTP_TIMEOUT", "default-timeout": "UV_HTTP_TIMEOUT"}
PYPI = "https://pypi.org/simple/"


def _usable(item: str) -> bool:
    """pip only warns about a file:// index or a path that does not exist; uv would fail."""
    if item.startswith("file://"):
        return Path(item[len("file://") :]).exists()
    return "://" in item or Path(item).exists()


def settings(lines: list[str]) -> list[str]:
    """``pip config list`` lines (``global.extra-index-url='a b'``; the environment's come
    first and win) as uv options."""
    args: list[str] = []
    seen: set[tuple[str, str]] = set()
    env_set: set[str] = set()
    for line in lines:
        name, sep, raw = line.strip().partition("=")
        section, _, key = name.rpartition(".")
        if not sep or section not in ("global", "install", ":env:"):
            continue
        try:
            value = str(ast.literal_eval(raw))
        except (ValueError, SyntaxError):
            continue
        if key in FLAGS:
            for item in value.split():
                if (key == "trusted-host" or _usable(item)) and (key, item) not in seen:
                    seen.add((key, item))
                    args += [FLAGS[key], item]
        elif key in ENVS and ENVS[key] not in env_set and value:
            env_set.add(ENVS[key])
            args.append(f"env:{ENVS[key]}={value}")
        elif key == "no-index" and value.lower() in ("1", "true", "yes", "on"):
            args.append("--no-index")
    return args


def _platform_tag() -> str:
    machine = platform.machine()
    libc = "manylinux" if platform.libc_ver()[0] == "glibc" else "musllinux"
    return rf"{libc}_\d+_\d+_{re.escape(machine)}"


def _version(filename: str) -> tuple[int, ...] | None:
    match = re.match(r"uv-(\d+(?:\.\d+)*)-", filename)  # releases only, no pre-releases
    return tuple(int(p) for p in match[1].split(".")) if match else None


def _files(index: str) -> list[tuple[str, str, str | None]]:
    """(filename, url, sha256) of uv's files on a PEP 503/691 index."""
    page = urllib.parse.urljoin(index.rstrip("/") + "/", "uv/")
    request = urllib.request.Request(
        page, headers={"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        body = response.read()
        base = response.geturl()
        kind = response.headers.get("Content-Type", "")
    found = []
    if "json" in kind:
        for f in json.loads(body)["files"]:
            if not f.get("yanked"):
                url = urllib.parse.urljoin(base, f["url"])
                found.append((f["filename"], url, f.get("hashes", {}).get("sha256")))
        return found
    for href in re.findall(r'href="([^"]+)"', body.decode("utf-8", "replace")):
        url = urllib.parse.urljoin(base, href.replace("&amp;", "&"))
        path, _, fragment = url.partition("#")
        digest = fragment.removeprefix("sha256=") if fragment.startswith("sha256=") else None
        found.append((urllib.parse.unquote(path.rsplit("/", 1)[-1]), path, digest))
    return found


def fetch(target: Path, index: str) -> None:
    tag = re.compile(_platform_tag())
    wheels = [
        (version, name, url, digest)
        for name, url, digest in _files(index)
        if name.endswith(".whl") and tag.search(name) and (version := _version(name))
    ]
    if not wheels:
        raise SystemExit(f"no uv wheel for {platform.machine()} on {index}")
    _, name, url, digest = max(wheels)
    with urllib.request.urlopen(url, timeout=120) as response:
        data = response.read()
    if digest and hashlib.sha256(data).hexdigest() != digest:
        raise SystemExit(f"{name}: sha256 mismatch")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        bin_dir = Path(tmp) / "bin"
        bin_dir.mkdir()
        with zipfile.ZipFile(io.BytesIO(data)) as wheel:
            for member in wheel.namelist():
                if re.fullmatch(r"uv-[^/]+\.data/scripts/(uv|uvx)", member):
                    out = bin_dir / member.rsplit("/", 1)[1]
                    with wheel.open(member) as src, out.open("wb") as dst:
                        shutil.copyfileobj(src, dst)
                    out.chmod(0o755)
        if not (bin_dir / "uv").exists():
            raise SystemExit(f"{name} holds no uv binary")
        shutil.rmtree(target, ignore_errors=True)
        Path(tmp).rename(target)
        Path(tmp).mkdir()  # for TemporaryDirectory's clean-up


def pip_wheel() -> str | None:
    places = [Path("/usr/share/python-wheels")]
    try:
        import ensurepip

        places.insert(0, Path(ensurepip.__file__).parent / "_bundled")
    except ImportError:
        pass
    for place in places:
        found = sorted(place.glob("pip-*.whl"))
        if found:
            return str(found[-1])
    return None


def main(argv: list[str]) -> int:
    if argv[:1] == ["settings"]:
        sys.stdout.write("".join(a + "\0" for a in settings(sys.stdin.read().splitlines())))
        return 0
    if argv[:1] == ["pip-wheel"]:
        wheel = pip_wheel()
        if wheel is None:
            return 1
        print(wheel)
        return 0
    if argv[:1] == ["fetch"] and len(argv) in (2, 3):
        fetch(Path(argv[1]), argv[2] if len(argv) == 3 else PYPI)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
