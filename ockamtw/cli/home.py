"""
What the command line keeps under C{$OCKAM_HOME} besides nodes and
identities (every directory 0700, every file 0600, written atomically):

  - C{orchestrator.json}: C{{"url", "token"}}, the Orchestrator this home
    talks to and its bearer token (C{ockam orchestrator start} writes it
    for the local one, C{ockam enroll --orchestrator URL --token TOKEN} for
    a remote one); C{OCKAMTW_ORCHESTRATOR_URL} and
    C{OCKAMTW_ORCHESTRATOR_TOKEN} override it;
  - C{orchestrator/}: the local Orchestrator (C{ockam orchestrator start}):
    its data (database, secrets key, C{admin.token}, C{http.json}), C{pid},
    C{orchestrator.log} and C{run.json} (its data directory and command);
  - C{projects/NAME.json}: what C{project.json} holds for each project this
    home knows (Ockam's C{/project/NAME} lookup);
  - C{config.json}: C{{"enrolled_identity", "default_project", "lookup"}}:
    the identity C{ockam enroll} enrolled (nodes created here use it), the
    project used when none is named, and Ockam's lookup map
    (C{/space/NAME} -> C{{id}}, C{/project/NAME} -> C{{id, node_route,
    identity_id, authority: {id, address, identity}}});
  - C{credentials/NAME.json}: credentials stored with C{ockam credential
    store}.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import TYPE_CHECKING, Dict, List, Optional

from ..control import state as st
from .errors import CLIError, os_error

if TYPE_CHECKING:  # imported where used: the project package loads cryptography
    from ..project.projectinfo import ProjectInfo

ORCHESTRATOR_JSON = "orchestrator.json"
CONFIG_JSON = "config.json"
URL_ENV = "OCKAMTW_ORCHESTRATOR_URL"
TOKEN_ENV = "OCKAMTW_ORCHESTRATOR_TOKEN"


def write_private(path: str, text: str) -> None:
    """
    Replace C{path} with C{text} atomically (a fresh 0600 file renamed
    over it), its directory made 0700 if missing.
    """
    directory = os.path.dirname(path)
    st.private_dir(directory)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _read_json(path: str, what: str) -> Optional[dict]:
    try:
        with open(path, "rb") as f:
            raw = f.read(1 << 20)
    except (FileNotFoundError, NotADirectoryError):
        return None  # (a home that is not a directory: the command says so itself)
    except OSError as e:
        raise CLIError(f"cannot read {what}: {os_error(e, path)}") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CLIError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise CLIError(f"{path}: expected a JSON object")
    return doc


def _write_json(path: str, doc: dict, what: str) -> None:
    try:
        write_private(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    except OSError as e:
        raise CLIError(f"cannot write {what}: {os_error(e, path)}") from None


# --- orchestrator.json -----------------------------------------------------------------------


def orchestrator_json(home: str) -> str:
    return os.path.join(home, ORCHESTRATOR_JSON)


def orchestrator_dir(home: str) -> str:
    return os.path.join(home, "orchestrator")


def read_orchestrator(home: str, environ=None) -> Optional[Dict[str, str]]:
    """
    C{{"url", "token"}} of the Orchestrator this home talks to (the
    environment first, then C{orchestrator.json}), or C{None}.
    """
    env = os.environ if environ is None else environ
    doc = _read_json(orchestrator_json(home), "the orchestrator's address") or {}
    url = env.get(URL_ENV) or doc.get("url")
    token = env.get(TOKEN_ENV) or doc.get("token")
    if not url:
        return None
    if not isinstance(url, str) or not isinstance(token, (str, type(None))):
        raise CLIError(f"{orchestrator_json(home)}: url and token must be text")
    return {"url": url, "token": token}


def write_orchestrator(home: str, url: str, token: str) -> None:
    _write_json(orchestrator_json(home), {"url": url, "token": token}, "the orchestrator's address")


# --- config.json ----------------------------------------------------------------------------------


def read_config(home: str) -> dict:
    doc = _read_json(os.path.join(home, CONFIG_JSON), "the configuration") or {}
    doc.setdefault("lookup", {})
    return doc


def write_config(home: str, config: dict) -> None:
    _write_json(os.path.join(home, CONFIG_JSON), config, "the configuration")


def enrolled_identity(home: str) -> Optional[str]:
    """
    The name of the identity C{ockam enroll} enrolled in this home, if its
    file is still there.
    """
    name = read_config(home).get("enrolled_identity")
    if isinstance(name, str) and st.valid_node_name(name) and os.path.exists(st.identity_path(home, name)):
        return name
    return None


def default_project(home: str) -> Optional[str]:
    name = read_config(home).get("default_project")
    if isinstance(name, str) and os.path.exists(project_path(home, name)):
        return name
    names = project_names(home)
    if "default" in names:
        return "default"
    return names[0] if len(names) == 1 else None


def lookup_of(info: ProjectInfo) -> dict:
    """
    Ockam's C{/project/NAME} lookup entry for C{info}.
    """
    from ..project.errors import ProjectInfoError

    authority = None
    if info.authority_identity is not None:
        try:
            identifier = info.authority().identifier
        except ProjectInfoError:
            identifier = None
        authority = {"id": identifier, "address": info.authority_access_route, "identity": info.authority_identity}
    return {"id": info.id, "node_route": info.access_route, "identity_id": info.identity, "authority": authority}


# --- projects/ -------------------------------------------------------------------------------------


def projects_dir(home: str) -> str:
    return os.path.join(home, "projects")


def project_path(home: str, name: str) -> str:
    return os.path.join(projects_dir(home), name + ".json")


def project_names(home: str) -> List[str]:
    try:
        entries = os.listdir(projects_dir(home))
    except FileNotFoundError:
        return []
    except OSError as e:
        raise CLIError(f"cannot list projects: {os_error(e)}") from None
    return sorted(e[: -len(".json")] for e in entries if e.endswith(".json") and not e.startswith("."))


def save_project(home: str, info: ProjectInfo) -> str:
    """
    Keep C{info} as C{projects/NAME.json} (the text of C{project.json}) and
    in the lookup; returns the file's path.
    """
    if not st.valid_node_name(info.name):
        raise CLIError(f"cannot keep project {info.name!r}: not a usable name")
    path = project_path(home, info.name)
    try:
        write_private(path, info.to_json())
    except OSError as e:
        raise CLIError(f"cannot keep project {info.name}: {os_error(e, path)}") from None
    config = read_config(home)
    config["lookup"][f"/project/{info.name}"] = lookup_of(info)
    write_config(home, config)
    return path


def load_project(home: str, name: str) -> ProjectInfo:
    """
    The project C{name} this home knows.

    @raise CLIError: when it knows none of that name.
    """
    if not st.valid_node_name(name):
        raise CLIError(f"not a project name: {name!r}")
    path = project_path(home, name)
    if not os.path.exists(path):
        known = ", ".join(project_names(home)) or "none"
        raise CLIError(
            f"no project {name!r} in {projects_dir(home)} (known: {known}; enroll with: ockam enroll, "
            "or give --project-path project.json)"
        )
    from ..project.projectinfo import ProjectInfo

    return ProjectInfo.load(path)


def forget_project(home: str, name: str) -> None:
    try:
        os.unlink(project_path(home, name))
    except FileNotFoundError:
        pass
    except OSError as e:
        raise CLIError(f"cannot forget project {name}: {os_error(e)}") from None
    config = read_config(home)
    config["lookup"].pop(f"/project/{name}", None)
    if config.get("default_project") == name:
        config.pop("default_project")
    write_config(home, config)


# --- credentials/ ------------------------------------------------------------------------------------


def credentials_dir(home: str) -> str:
    return os.path.join(home, "credentials")


def credential_path(home: str, name: str) -> str:
    return os.path.join(credentials_dir(home), name + ".json")


def credential_names(home: str) -> List[str]:
    try:
        entries = os.listdir(credentials_dir(home))
    except FileNotFoundError:
        return []
    return sorted(e[: -len(".json")] for e in entries if e.endswith(".json") and not e.startswith("."))


def read_credential(home: str, name: str) -> dict:
    doc = _read_json(credential_path(home, name), f"credential {name}")
    if doc is None:
        raise CLIError(f"no credential named {name!r} (see: ockam credential list)")
    return doc


def write_credential(home: str, name: str, doc: dict) -> None:
    _write_json(credential_path(home, name), doc, f"credential {name}")
