"""YAML read with limits: a configuration is a page of YAML, never a bomb.

Hostile YAML: a configuration needs a few levels of nesting and hardly any aliases. Limits on
the composed document stop alias ("billion laughs") bombs and nesting deep enough to exhaust
the parser's recursion before anything is built from them. Every failure is a ConfigError
that names the file and, where PyYAML knows it, the line and column.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from pathlib import Path
from typing import Any

from carbonmeter.config.errors import ConfigError

MAX_FILE_BYTES = 1 << 20  # a configuration is a page of YAML, not a megabyte
MAX_DEPTH = 32
MAX_ALIASES = 100
MAX_NODES = 10_000  # values in the document with every alias expanded


def read_yaml(path: Path) -> Any:
    """A YAML file's content: at most 1 MiB of UTF-8, parsed with parse_yaml's limits."""
    try:
        data = read_file(path, MAX_FILE_BYTES)
        text = data.decode("utf-8")
    except ValueError as e:  # the limit: more than a configuration holds
        raise ConfigError(f"{path}: {e}; a configuration may be at most 1 MiB") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    return parse_yaml(text, str(path))


def read_file(path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of a regular file, at most `limit` of them (ValueError beyond). Opened
    without blocking and checked once open, so a FIFO (which would block) or a device
    (/dev/zero never ends) given as a file is an OSError naming what it is; the limit is
    on what is read, not on st_size, which /proc files report as 0."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, f"not a regular file ({_kind(mode)})")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 16, limit + 1 - size))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
        raise ValueError(f"more than {limit} bytes")
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file"


def read_mapping(path: Path) -> dict[str, Any]:
    loaded = read_yaml(path)
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, not a "
                          f"{type(loaded).__name__}")
    return loaded


@functools.cache
def _yaml() -> Any:
    """PyYAML and the limited loader, built on first use: the defaults are a Python module
    (carbonmeter.config.defaults), so a measurement without a configuration file never
    imports PyYAML (about 12 ms by python -X importtime)."""
    import yaml

    class Refused(yaml.YAMLError):
        def __init__(self, problem: str, mark: Any = None) -> None:
            super().__init__(problem)
            self.problem, self.problem_mark = problem, mark

    class LimitedLoader(yaml.SafeLoader):
        """SafeLoader that refuses deep nesting and many aliases while composing."""

        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self._depth = 0
            self._aliases = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                self._aliases += 1
                if self._aliases > MAX_ALIASES:
                    raise Refused(f"more than {MAX_ALIASES} aliases (*name); a configuration "
                                  "needs hardly any", self.peek_event().start_mark)
            self._depth += 1
            try:
                if self._depth > MAX_DEPTH:
                    raise Refused(f"nested deeper than {MAX_DEPTH} levels; a configuration "
                                  "needs 3", self.peek_event().start_mark)
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

    def count_nodes(node: Any) -> None:
        """Refuse a document whose values, aliases expanded, exceed MAX_NODES (an alias
        bomb, or an alias to its own ancestor, which never ends)."""
        stack, n = [node], 0
        while stack:
            item = stack.pop()
            n += 1
            if n > MAX_NODES:
                raise Refused(f"more than {MAX_NODES} values once aliases are expanded (an "
                              "alias bomb, or an alias inside its own anchor)")
            if isinstance(item, yaml.SequenceNode):
                stack.extend(item.value)
            elif isinstance(item, yaml.MappingNode):
                stack.extend(v for pair in item.value for v in pair)

    return yaml, LimitedLoader, count_nodes


def parse_yaml(text: str, origin: str) -> Any:
    """YAML text to Python data, with the limits above; ConfigError for anything wrong."""
    yaml, limited_loader, count_nodes = _yaml()
    loader = None
    try:
        loader = limited_loader(text)  # the reader refuses unprintable characters here
        node = loader.get_single_node()
        if node is None:
            return None
        count_nodes(node)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or e
        if isinstance(e, yaml.reader.ReaderError):
            problem = (f"character #x{e.character:04x} is not allowed (position "
                       f"{e.position})" if isinstance(e.character, int) else e.reason)
        problem = " ".join(str(problem).split())  # one line, whatever PyYAML wrote
        raise ConfigError(f"{origin}: invalid YAML{where}: {problem}") from None
    except (ValueError, TypeError, AttributeError, OverflowError, RecursionError) as e:
        # PyYAML's constructors raise these for values like 2020-13-45 or !!int abc
        raise ConfigError(f"{origin}: invalid YAML value: {e}") from None
    finally:
        if loader is not None:
            loader.dispose()
