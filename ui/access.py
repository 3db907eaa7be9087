"""Which models the app opens when it is served to others: its allow-list.

Without a policy (the default of `make run`) the app opens any alias, hub id or local path, as
the command line does (`OPEN`). Served to others, it is given a policy file:

    python -m ui.serve --allow allow.json        # or EXPLORER_ALLOW=allow.json streamlit run app.py

    {"aliases": ["minilm"],                 the offline aliases offered (default: all)
     "hub": ["gpt2", "HuggingFaceTB/*"],    hub ids, exact or patterns ('org/*')
     "root": "../exports",                  a folder (relative to the policy file) whose contents may open
     "folders": ["minilm-int3"],            those of root listed in the picker (default: its subfolders)
     "max_download_bytes": 2000000000,      a hub model whose weight files sum to more is refused
     "typing": false}                       whether visitors may type a reference of their own

The picker lists the aliases, the exact hub ids and the folders (`Policy.listed`). With typing
on, a visitor may also type a hub id that a pattern allows, or a path inside root (absolute, or
`./name` from root). `Policy.check` decides before touching the filesystem beyond resolving a
path inside root, and refuses in one line that says nothing about the filesystem (`REFUSED`):
whether `/etc` exists, or holds a config.json, is never told.
"""
from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import UserError
from engine.models import hub
from engine.models.loading import ALIASES, DEFAULT_MODEL

log = logging.getLogger(__name__)

ENV = "EXPLORER_ALLOW"
REFUSED = "This server does not open that model: pick one from its list."
FIELDS = ("aliases", "hub", "root", "folders", "max_download_bytes", "typing")
PATH_STARTS = ("/", ".", "~")  # a typed path; anything else is an alias or a hub id
HUB_PART = re.compile(r"[A-Za-z0-9](?:[\w.-]{0,94}\w)?", re.ASCII)  # the hub's rule for an owner or a name
HUB_PATTERN = re.compile(r"[\w.*?-]+(/[\w.*?-]+)?", re.ASCII)


class PolicyError(UserError):
    """A policy file that cannot be used, in one line."""


class Refused(UserError):
    """A model the policy does not let this server open, in one line."""


def is_hub_id(ref: str) -> bool:
    """Whether `ref` is a hub id as the hub spells them: `name` or `owner/name`, letters, digits,
    `_`, `-` and `.`, no `..` or `--`, not starting or ending with `.` or `-`.

    >>> is_hub_id("HuggingFaceTB/SmolLM2-135M"), is_hub_id("org/.."), is_hub_id("/etc")
    (True, False, False)
    """
    parts = ref.split("/")
    return len(parts) <= 2 and all(HUB_PART.fullmatch(p) and ".." not in p and "--" not in p for p in parts)


def _within(path: str, root: str) -> bool:
    """Whether absolute `path` is `root` or lies under it (compared by path components)."""
    return os.path.commonpath([path, root]) == root


def human_bytes(n: int) -> str:
    """>>> human_bytes(3 * 2**30), human_bytes(5 * 2**20)
    ('3.00 GiB', '5.0 MiB')"""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


class Open:
    """Today's behaviour, the default: any alias, hub id or local path, listed aliases first."""

    served = False
    typing = True
    listed = tuple(ALIASES)
    default = DEFAULT_MODEL

    def check(self, ref: str, **_) -> str:
        return ref


OPEN = Open()


@dataclass(frozen=True)
class Policy:
    """What a served app opens (see the module's docstring); `root` and `folders` are real paths."""

    aliases: tuple[str, ...] = tuple(ALIASES)
    hub: tuple[str, ...] = ()
    root: str | None = None
    folders: tuple[str, ...] = ()
    max_download_bytes: int | None = None
    typing: bool = False
    _sizes: dict = field(default_factory=dict, compare=False, repr=False)  # hub id -> weight bytes, asked once

    served = True

    # -- reading the policy -------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Policy:
        """The policy in a JSON file; a PolicyError naming the file and what is wrong with it."""
        try:
            data = json.loads(Path(path).read_text())
        except OSError as e:
            raise PolicyError(f"{path}: cannot read it ({e.strerror or e})") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise PolicyError(f"{path}: not JSON ({e})") from None
        try:
            return cls.from_dict(data, Path(path).resolve().parent)
        except PolicyError as e:
            raise PolicyError(f"{path}: {e}") from None

    @classmethod
    def from_dict(cls, d: dict, base: Path) -> Policy:
        """The policy from its fields (unknown ones refused); `root` is relative to `base`."""
        if not isinstance(d, dict):
            raise PolicyError("must be a JSON object with the fields " + ", ".join(FIELDS))
        unknown = [k for k in d if k not in FIELDS]
        if unknown:
            raise PolicyError(f"unknown field {unknown[0]!r} (fields: {', '.join(FIELDS)})")
        aliases = _strings(d, "aliases", list(ALIASES))
        bad = [a for a in aliases if a not in ALIASES]
        if bad:
            raise PolicyError(f"aliases: {bad[0]!r} is not an alias ({', '.join(ALIASES)})")
        hub_ids = _strings(d, "hub", [])
        bad = [h for h in hub_ids if not (is_hub_id(h) or HUB_PATTERN.fullmatch(h) and set("*?") & set(h))]
        if bad:
            raise PolicyError(f"hub: {bad[0]!r} is neither a hub id nor a pattern such as 'org/*'")
        root = d.get("root")
        if root is not None:
            if not isinstance(root, str) or not root:
                raise PolicyError("root: must be a folder's path")
            real = os.path.realpath(base / os.path.expanduser(root))
            if not os.path.isdir(real):
                raise PolicyError(f"root: {root!r} is not a folder")
            root = real
        folders = _folders(d, root)
        limit = d.get("max_download_bytes")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise PolicyError("max_download_bytes: must be a whole number of bytes, or null for no limit")
        typing = d.get("typing", False)
        if not isinstance(typing, bool):
            raise PolicyError("typing: must be true or false")
        policy = cls(tuple(aliases), tuple(hub_ids), root, folders, limit, typing)
        if not policy.listed:
            raise PolicyError("lists no model to pick (give aliases, exact hub ids or folders)")
        return policy

    # -- what the picker shows ---------------------------------------------------------------

    @property
    def listed(self) -> tuple[str, ...]:
        """The picker's models: the aliases, the exact hub ids (not patterns), the folders."""
        return (*self.aliases, *(h for h in self.hub if is_hub_id(h)), *self.folders)

    @property
    def default(self) -> str:
        """The model a session starts on: the app's default when listed, else the first listed."""
        return DEFAULT_MODEL if DEFAULT_MODEL in self.listed else self.listed[0]

    # -- the check ---------------------------------------------------------------------------

    def check(self, ref: str, *, listed_only: bool | None = None, download: bool = True) -> str:
        """The reference to open for `ref` (a path: its real path), or Refused.

        listed_only: only what the picker lists (default: unless visitors may type); False for
        what the server's own files name (an export's source model). download: whether a hub
        model's weights would be downloaded (False for its config alone), so its size counts.

            policy.check("/etc")        # Refused(REFUSED): nothing read from /etc
            policy.check("./bert")      # '/srv/models/bert' when root is /srv/models and typing is on
        """
        ref = ref.strip()
        free = self.typing if listed_only is None else not listed_only
        if ref in self.aliases:
            return ref
        if ref.startswith(PATH_STARTS):
            real = self._inside_root(ref)
            if free or real in self.folders:
                return real
            raise Refused(REFUSED)
        if ref in ALIASES or not is_hub_id(ref) or not self._hub_allows(ref, free):
            raise Refused(REFUSED)
        if download and self.max_download_bytes is not None and not _offline():
            self._check_size(ref)
        if os.path.lexists(ref):  # the loader would take the server's own folder of that name for it
            raise Refused(REFUSED)
        return ref

    def _inside_root(self, ref: str) -> str:
        """The real path of `ref` (from root unless absolute) when it lies inside root; the text is
        judged first, so a path outside root is refused without touching it."""
        if self.root is None or ref.startswith("~") or "\0" in ref:
            raise Refused(REFUSED)
        lexical = os.path.normpath(os.path.join(self.root, ref))
        if not _within(lexical, self.root):
            raise Refused(REFUSED)
        real = os.path.realpath(lexical)  # symlinks resolved: one pointing out of root is refused
        if not _within(real, self.root):
            raise Refused(REFUSED)
        return real

    def _hub_allows(self, ref: str, free: bool) -> bool:
        if ref in self.hub:
            return True
        return free and any(fnmatch.fnmatchcase(ref, p) for p in self.hub if set("*?") & set(p))

    def _check_size(self, ref: str) -> None:
        """Refused when the hub lists more weight bytes for `ref` than the limit (asked once)."""
        if ref not in self._sizes:
            try:
                self._sizes[ref] = hub.download_bytes(ref)
            except UserError as e:
                log.warning("size of %s: %s", ref, e)
                raise Refused(f"This server could not ask the hub how large {ref} is, so it does not download "
                              "it.") from None
        size = self._sizes[ref]
        if size > self.max_download_bytes:
            raise Refused(f"{ref} has {human_bytes(size)} of weights, over this server's download limit of "
                          f"{human_bytes(self.max_download_bytes)}: pick a smaller model.")


def _strings(d: dict, name: str, default: list) -> list[str]:
    value = d.get(name, default)
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(f"{name}: must be a list of names")
    return value


def _folders(d: dict, root: str | None) -> tuple[str, ...]:
    """The listed folders' real paths, each inside root; default: root's subfolders (not hidden)."""
    if "folders" not in d:
        if root is None:
            return ()
        subfolders = (os.path.realpath(e.path) for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        return tuple(sorted(p for p in subfolders if _within(p, root)))
    names = _strings(d, "folders", [])
    if names and root is None:
        raise PolicyError("folders: needs a root to lie in")
    real = []
    for name in names:
        path = os.path.realpath(os.path.join(root, name))
        if not _within(path, root) or not os.path.exists(path):
            raise PolicyError(f"folders: {name!r} is not a folder or file inside root")
        real.append(path)
    return tuple(real)


def _offline() -> bool:
    """Whether the hub is switched off (HF_HUB_OFFLINE): nothing is downloaded, so no size counts."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


_loaded: dict[str, Policy] = {}


def current() -> Policy | Open:
    """The policy named by $EXPLORER_ALLOW (read once per process), or OPEN when it is unset;
    a PolicyError when the file cannot be used."""
    path = os.environ.get(ENV, "").strip()
    if not path:
        return OPEN
    if path not in _loaded:
        _loaded[path] = Policy.from_file(path)
    return _loaded[path]


def for_visitors() -> Policy | Open:
    """`current()`, for a page: a policy that cannot be used opens nothing, and the visitor's
    error box says so without the server's paths (the log has them)."""
    try:
        return current()
    except PolicyError as e:
        log.error("%s: %s", ENV, e)
        raise UserError("This server's list of allowed models cannot be read (its log says why): "
                        "no model opens.") from None
