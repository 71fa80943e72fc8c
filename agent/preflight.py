"""Checks and derivations that `logmend check` and `logmend run` share.

Everything here runs once, before reading starts (and again on reload): who
each pack's fixes run as, whether a source would read the agent's own log,
which patterns each source's matcher holds, the spool's bounds.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import pwd
import stat
from collections.abc import Iterable

from agent.config import Config
from agent.derived import Memo
from agent.errors import ConfigError, ConfigErrors
from agent.examples import admit
from agent.match import Matcher
from agent.packs import Pack
from agent.packset import BrokenPack
from agent.remedy import Identity, resolve_identity
from agent.state import SpoolLimits

log = logging.getLogger("logmend")


Shared = dict[tuple[str, ...], Matcher]  # one matcher per set of packs, whoever uses it


def matchers_for(
    config: Config, packs: list[Pack], memo: Memo | None = None, shared: Shared | None = None
) -> list[Matcher]:
    """One matcher per source, over the patterns of the packs that source names (for a
    journal source, the entries of units that no pack of its claims)."""
    shared = {} if shared is None else shared
    out = []
    for source in config.sources:
        chosen = [p for p in packs if source.packs is None or p.name in source.packs]
        if source.journal is not None:
            chosen = [p for p in chosen if not p.units]
        out.append(shared_matcher(config, chosen, shared, memo))
    return out


def unit_matcher(
    config: Config,
    index: int,
    unit: str,
    packs: list[Pack],
    shared: Shared,
    memo: Memo | None = None,
) -> Matcher:
    """The matcher for journal source `index`'s entries of `unit`: its packs that name no
    units, and those whose units include it."""
    source = config.sources[index]
    chosen = [
        p for p in packs if (source.packs is None or p.name in source.packs) and p.applies_to(unit)
    ]
    return shared_matcher(config, chosen, shared, memo)


def shared_matcher(
    config: Config, chosen: list[Pack], shared: Shared, memo: Memo | None
) -> Matcher:
    names = tuple(p.name for p in chosen)
    if names not in shared:
        limits = config.limits
        shared[names] = Matcher(
            [pattern for pack in chosen for pattern in pack.patterns],
            limits.regex_timeout,
            limits.matcher,
            limits.max_regex_timeouts,
            memo=memo,
        )
    return shared[names]


def unknown_packs(config: Config, present: Iterable[str]) -> list[ConfigError]:
    """Sources naming a pack that is in no pack folder (`present`: the names of the
    packs found, broken ones included): in `logmend check` an error."""
    names = sorted(present)
    pending = config.params.pending  # synced packs not here yet are not unknown
    errors = []
    for index, source in enumerate(config.sources):
        for name in source.packs or ():
            if name not in names and name not in pending and "*" not in pending:
                import difflib  # only on an error

                close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                errors.append(
                    ConfigError(
                        config.file,
                        f"source[{index}].packs",
                        None,
                        f"names pack {name!r}, which is not loaded{hint}: nothing would match",
                    )
                )
    return errors


def spool_limits(config: Config) -> SpoolLimits:
    esc = config.escalation
    if esc is None:
        return SpoolLimits()
    return SpoolLimits(esc.aggregate, esc.spool_max_events, esc.spool_max_bytes)


def unrunnable(config: Config, packs: list[Pack]) -> tuple[list[Pack], list[BrokenPack]]:
    """The packs whose fixes' user or group this host does not have, set aside like a
    broken pack (named, reported, the others run) instead of refusing the agent."""
    keep: list[Pack] = []
    broken: list[BrokenPack] = []
    for pack in packs:
        if pack.user is not None or pack.group is not None:
            try:
                group = pack.group or (None if pack.user else config.fix_group)
                resolve_identity(pack.user or config.fix_user, group)
            except ValueError as exc:
                error = ConfigError(pack.file, "pack.user", None, f"{exc} on this host")
                broken.append(BrokenPack(pack.dir, pack.name, pack.owner, pack.version, (error,)))
                continue
        keep.append(pack)
    return keep, broken


def runnable_packs(config: Config, memo: Memo) -> tuple[list[Pack], list[BrokenPack]]:
    """The packs that run on this host and the ones set aside (each named with its
    errors): loaded one by one, examples proven, fix users present. For the agent's
    start and reload and for `run`, `explain`."""
    params = config.params
    if config.sync is not None:  # and the central values, from the last sync
        from agent.packsync import effective_params

        params = effective_params(config)
    packs, broken = admit(config.pack_roots, params, memo)
    packs, homeless = unrunnable(config, packs)
    return packs, broken + homeless


def identities_for(
    config: Config, packs: list[Pack], broken: Iterable[str] = ()
) -> dict[str, Identity | None]:
    """Who each pack's fixes run as (applied only when the agent is root).

    Least privilege: root only for a pack that asks for it (`user = "root"`)
    and that the host's config lists in `allow_root`; every other fix runs as
    the pack's user or the config's unprivileged `fix_user`. `allow_root` may name
    a pack that is `broken` (set aside, not missing).
    """
    out: dict[str, Identity | None] = {}
    errors = []
    try:
        default = resolve_identity(config.fix_user, config.fix_group)
    except ValueError as exc:
        raise ConfigErrors([ConfigError(config.file, "agent.fix_user", None, str(exc))]) from None
    if default is not None and (default.uid == 0 or default.gid == 0):
        raise ConfigErrors(
            [
                ConfigError(
                    config.file,
                    "agent.fix_user" if default.uid == 0 else "agent.fix_group",
                    None,
                    "must not be root: list the packs whose fixes need root in allow_root",
                )
            ]
        )
    names = {p.name for p in packs} | set(broken)
    pending = config.params.pending  # synced packs not here yet
    for name in config.allow_root:
        if name not in names and name not in pending and "*" not in pending:
            errors.append(ConfigError(config.file, "agent.allow_root", None, f"no pack {name!r}"))
    for pack in packs:
        if pack.user is None and pack.group is None:
            out[pack.name] = default
            continue
        try:
            group = pack.group or (None if pack.user else config.fix_group)
            identity = resolve_identity(pack.user or config.fix_user, group)
        except ValueError as exc:
            errors.append(ConfigError(pack.file, "pack.user", None, str(exc)))
            continue
        if _privileged(identity, pack.group) and pack.name not in config.allow_root:
            log.warning(
                "pack %s asks to run its fixes as root or with a group of its choosing, "
                "which %s does not allow (allow_root); they run as %s",
                pack.name,
                config.file,
                config.fix_user,
            )
            identity = default
        out[pack.name] = identity
    if errors:
        raise ConfigErrors(errors)
    if os.geteuid() != 0:
        log.info("not running as root: every fix runs as this agent's own user")
    return out


def _privileged(identity: Identity | None, chosen_group: str | None) -> bool:
    """Root, group root, or a group the pack chose (shadow, disk, docker, ...): host consent."""
    if identity is None:
        return False
    if identity.uid == 0 or identity.gid == 0:
        return True
    return chosen_group is not None and identity.gid != pwd.getpwnam(identity.user).pw_gid


def own_log_identity() -> tuple[int, int] | None:
    """The file the agent's own log (stderr) goes to, if it is a file."""
    try:
        st = os.fstat(2)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None


def refuse_own_log(config: Config, own: tuple[int, int] | None) -> None:
    """A source that matches the agent's own log would feed its log lines back into it."""
    if own is None:
        return
    for index, source in enumerate(config.sources):
        for path in glob.glob(source.path):
            with contextlib.suppress(OSError):
                st = os.stat(path)
                if (st.st_dev, st.st_ino) == own:
                    raise ConfigErrors(
                        [
                            ConfigError(
                                config.file,
                                f"source[{index}].path",
                                None,
                                f"{path} is the agent's own log (its stderr): it would read "
                                "its own lines back",
                            )
                        ]
                    )
