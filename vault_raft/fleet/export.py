"""``fleet export``: the one directory (or tar archive) a node's host needs.

A fleet directory is the operator's: it holds the fleet CA's key and the
admin key, which never leave the operator's machine.  Each node's host gets
exactly the files of :data:`NODE_FILES` from ``FLEET/nK/`` (plus
:data:`OPTIONAL_NODE_FILES` where the fleet has them), in a directory of mode
0700 with files of mode 0600: what ``vault-raft node --dir`` runs from.  The
node's runtime files (``data/``, logs, pid files) are never exported.
docs/ops.md has the table of which file goes where.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tarfile
import tempfile

from vault_raft.fleet.config import ConfigError, FleetInfo
from vault_raft.storage.files import atomic_write

#: What a node's host needs, all made by ``fleet init``: the node's config,
#: the fleet keys and the node's identity key, its TLS key and certificate,
#: the fleet CA's certificate, the signed tenant list.
NODE_FILES = ("node.json", "keystore.bin", "tls.key", "tls.crt", "ca.crt", "tenants.bin")
#: Present once the operator publishes the fleet (``fleet publish``): the
#: signed bundle the node serves.  A later publish writes it again, to the
#: node directory on the operator's machine: copy it to the host as well.
OPTIONAL_NODE_FILES = ("trust.bin",)

_NODE_ID = re.compile(r"^n[1-9][0-9]?$")


def node_files(fleet_dir: str, node_id: str) -> list[tuple[str, str]]:
    """(name, source path) of each file ``node_id``'s host needs; ConfigError
    if the fleet has no such node or a required file is missing."""
    fleet = FleetInfo.load(os.path.join(fleet_dir, "fleet.json"))
    ids = [n.id for n in fleet.nodes]
    if not _NODE_ID.match(node_id) or node_id not in ids:
        raise ConfigError(f"no node {node_id!r} in the fleet {fleet_dir} (nodes: "
                          f"{', '.join(ids)})")
    src = os.path.join(fleet_dir, node_id)
    missing = [f for f in NODE_FILES if not os.path.isfile(os.path.join(src, f))]
    if missing:
        raise ConfigError(f"{src} lacks {missing}: not a complete node directory")
    names = list(NODE_FILES) + [f for f in OPTIONAL_NODE_FILES
                                if os.path.isfile(os.path.join(src, f))]
    return [(f, os.path.join(src, f)) for f in names]


def _is_tar(out: str) -> bool:
    return out.endswith((".tar", ".tar.gz", ".tgz"))


def export_node(fleet_dir: str, node_id: str, out: str) -> list[str]:
    """Write ``node_id``'s files to ``out``: a new (or empty) directory, or a
    tar archive (``.tar``, ``.tar.gz``, ``.tgz``) holding the directory
    ``node_id/``.  Refuses to overwrite anything; returns the names written."""
    files = node_files(fleet_dir, node_id)
    out = os.path.abspath(out)
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        raise ConfigError(f"{parent} does not exist")
    if _is_tar(out):
        if os.path.lexists(out):
            raise ConfigError(f"{out} exists: refusing to overwrite it")
        _write_tar(out, node_id, files)
    else:
        if os.path.lexists(out) and (not os.path.isdir(out) or os.listdir(out)):
            raise ConfigError(f"{out} exists and is not an empty directory: refusing to "
                              "export into it")
        _write_dir(out, files)
    return [name for name, _ in files]


def _write_dir(out: str, files: list[tuple[str, str]]) -> None:
    tmp = tempfile.mkdtemp(prefix=".node-export-", dir=os.path.dirname(out))  # mode 0700
    try:
        for name, src in files:
            dst = os.path.join(tmp, name)
            fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f, open(src, "rb") as s:
                shutil.copyfileobj(s, f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(dst, 0o600)
        if os.path.isdir(out):
            os.rmdir(out)  # empty (checked): replaced by the complete export
        os.rename(tmp, out)
        os.chmod(out, 0o700)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_tar(out: str, node_id: str, files: list[tuple[str, str]]) -> None:
    gz = out.endswith((".tar.gz", ".tgz"))
    buf = io.BytesIO()
    with (tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) if gz
          else tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT)) as tar:
        d = tarfile.TarInfo(node_id)
        d.type, d.mode = tarfile.DIRTYPE, 0o700
        tar.addfile(d)
        for name, src in files:
            with open(src, "rb") as s:
                data = s.read()
            info = tarfile.TarInfo(f"{node_id}/{name}")
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
    atomic_write(out, buf.getvalue())  # 0600
