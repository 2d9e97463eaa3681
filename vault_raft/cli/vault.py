"""The users' commands: ``vault-raft enroll``, ``recover``, ``delete``,
``change-code`` and ``change-secret``, with how they read recovery codes and
secrets and how they reach the fleet (``--client`` or ``--fleet``).  Errors
are reported by ``cli.main``."""

from __future__ import annotations

import getpass
import os
import sys

from vault_raft import client as C
from vault_raft import limits
from vault_raft.errors import UsageError
from vault_raft.storage.files import atomic_write


class _Codes:
    """Recovery codes from the environment, stdin lines, or a prompt."""

    def __init__(self):
        self._stdin_lines: list[str] | None = None

    def get(self, env: str, prompt: str, index: int) -> bytes:
        value = os.environ.get(env)
        if value is None:
            if sys.stdin is not None and not sys.stdin.isatty():
                if self._stdin_lines is None:
                    self._stdin_lines = sys.stdin.read().splitlines()
                if index >= len(self._stdin_lines):
                    raise UsageError(f"expected a recovery code on line {index + 1} of stdin "
                                     f"(or set {env})")
                value = self._stdin_lines[index]
            else:
                value = getpass.getpass(prompt)
        code = value.rstrip("\r\n")
        if not code:
            raise UsageError("the recovery code is empty")
        if len(code.encode()) > limits.CODE_MAX:
            raise UsageError(f"the recovery code is longer than {limits.CODE_MAX} bytes")
        return code.encode()


def _read_secret(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(limits.SECRET_MAX + 1)
    except OSError as exc:
        raise UsageError(f"cannot read --secret-file {path}: {exc.strerror}") from None
    if not 1 <= len(data) <= limits.SECRET_MAX:
        raise UsageError(f"the secret file must hold 1..{limits.SECRET_MAX} bytes")
    return data


def _write_secret(path: str, data: bytes, force: bool) -> None:
    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    if os.path.exists(path) and not force:
        raise UsageError(f"{path} exists; use --force to overwrite")
    atomic_write(path, data)


def _client(a) -> C.Client | C.TrustedClient:
    token = a.token or os.environ.get("VAULT_TOKEN") or None
    if a.client:
        return C.TrustedClient(a.client, a.state, timeout=a.timeout, token=token)
    return C.Client(a.fleet, timeout=a.timeout, token=token)


def cmd_enroll(a) -> int:
    secret = _read_secret(a.secret_file)
    code = _Codes().get("VAULT_RECOVERY_CODE", "recovery code: ", 0)
    n = _client(a).enroll(a.user, code, secret, a.max_attempts)
    print(f"enrolled {a.user}: {n} attempts allowed", file=sys.stderr)
    return 0


def _warn_failed(rec: C.Recovery) -> None:
    if rec.failed_attempts:
        print(f"warning: {rec.failed_attempts} wrong code(s) were tried since the last "
              "successful recovery", file=sys.stderr)


def cmd_recover(a) -> int:
    if a.out != "-" and os.path.exists(a.out) and not a.force:
        raise UsageError(f"{a.out} exists; use --force to overwrite")
    code = _Codes().get("VAULT_RECOVERY_CODE", "recovery code: ", 0)
    rec = _client(a).recover(a.user, code)
    _write_secret(a.out, rec.secret, a.force)
    _warn_failed(rec)
    print(f"recovered the secret of {a.user}" + (f" into {a.out}" if a.out != "-" else ""),
          file=sys.stderr)
    if rec.migrated_from:
        print(f"moved {a.user} from retiring fleet {rec.migrated_from} to the current fleet",
              file=sys.stderr)
    if rec.migration_conflict:
        print(f"warning: the current fleet holds another record for {a.user}; the secret was "
              "recovered from the retiring fleet, whose record is kept: ask the operator",
              file=sys.stderr)
    return 0


def cmd_delete(a) -> int:
    code = _Codes().get("VAULT_RECOVERY_CODE", "recovery code: ", 0)
    _warn_failed(_client(a).delete(a.user, code))
    print(f"deleted the record of {a.user}", file=sys.stderr)
    return 0


def cmd_change_code(a) -> int:
    codes = _Codes()
    code = codes.get("VAULT_RECOVERY_CODE", "current recovery code: ", 0)
    new = codes.get("VAULT_NEW_RECOVERY_CODE", "new recovery code: ", 1)
    _warn_failed(_client(a).change_code(a.user, code, new))
    print(f"changed the recovery code of {a.user}", file=sys.stderr)
    return 0


def cmd_change_secret(a) -> int:
    secret = _read_secret(a.secret_file)
    code = _Codes().get("VAULT_RECOVERY_CODE", "recovery code: ", 0)
    _warn_failed(_client(a).change_secret(a.user, code, secret))
    print(f"changed the secret of {a.user}", file=sys.stderr)
    return 0


def _user_arg(p):
    p.add_argument("--user", required=True, help=f"user id (1..{limits.USER_ID_MAX} bytes)")


def _fleet_arg(p):
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--client", help="client.json: trust the fleet through its signed bundle")
    g.add_argument("--fleet", help="fleet.json: pin this fleet's keys (operator tools)")
    p.add_argument("--state", default=None, help="with --client: the trust state file "
                   "(default: next to client.json)")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds to find a majority before giving up (exit 5)")
    p.add_argument("--token", default=None, help="the tenant's token for this user (default: "
                   "VAULT_TOKEN; with --fleet, minted with the fleet directory's local tenant "
                   "key)")


def register(sub) -> None:
    en = sub.add_parser("enroll", help="enroll a user (code from VAULT_RECOVERY_CODE/stdin/prompt)")
    _fleet_arg(en)
    _user_arg(en)
    en.add_argument("--secret-file", required=True)
    en.add_argument("--max-attempts", type=int, default=None)
    en.set_defaults(fn=cmd_enroll)

    rc = sub.add_parser("recover", help="recover a user's secret")
    _fleet_arg(rc)
    _user_arg(rc)
    rc.add_argument("--out", required=True, help="file to write the secret to ('-': stdout)")
    rc.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    rc.set_defaults(fn=cmd_recover)

    de = sub.add_parser("delete", help="delete a record (needs the current code)")
    _fleet_arg(de)
    _user_arg(de)
    de.set_defaults(fn=cmd_delete)

    cc = sub.add_parser("change-code", help="change the recovery code (current, then new code)")
    _fleet_arg(cc)
    _user_arg(cc)
    cc.set_defaults(fn=cmd_change_code)

    cs = sub.add_parser("change-secret", help="replace the stored secret (needs the code)")
    _fleet_arg(cs)
    _user_arg(cs)
    cs.add_argument("--secret-file", required=True)
    cs.set_defaults(fn=cmd_change_secret)
