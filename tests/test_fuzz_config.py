"""The service config file under random content: it loads, or fails with one ServiceConfigError that names the
offending key, never another exception (a typo in a config on the line box must say where it is)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inspector.service.config import ServiceConfigError, Settings, _fields, load_settings

KNOWN = ["/".join(path) for path, _ in _fields(Settings)]
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
KEYS = st.one_of(st.sampled_from(KNOWN), st.text("abcdefghijklmnopqrstuvwxyz_./", min_size=1, max_size=20))


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, last = key.split("/")
        node = data
        for part in parents:
            # A key already holding a value (None included) keeps it; the deeper key goes to a detached dict.
            node = node.setdefault(part, {}) if part not in node or isinstance(node[part], dict) else {}
        node[last] = value
    return data


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(KEYS, VALUES, max_size=4))
def test_a_config_file_loads_or_names_the_bad_key(tmp_path: Path, flat: dict[str, Any]) -> None:
    path = tmp_path / "service.yaml"
    path.write_text(yaml.safe_dump(_nest(flat)))
    try:
        load_settings(path, env={})
    except ServiceConfigError as exc:
        message = str(exc)
        assert str(path) in message
        parts = [part for key in flat for part in key.split("/")]
        assert any((part and part in message) or repr(part) in message for part in parts), message


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ("workers: many\n", "workers"),
        ("store:\n  dirr: x\n", "store.dirr"),
        ("links:\n  modbus:\n    port: -5\n", "links.modbus"),
        ("port: [1, 2]\n", "port"),
        ("colour: blue\n", "colour"),
        ("- a\n- b\n", "mapping"),
        ("workers: [\n", "cannot read"),
    ],
)
def test_config_mistakes_are_reported_by_key(tmp_path: Path, content: str, named: str) -> None:
    path = tmp_path / "service.yaml"
    path.write_text(content)
    with pytest.raises(ServiceConfigError, match=named):
        load_settings(path, env={})
