import os
import stat
import tomllib
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flame.common import (
    Config,
    ConfigError,
    UserError,
    default_config_path,
    default_state_dir,
    load_config,
    save_config_values,
)
from flame.common.config import _toml_string

TOKEN = "flm_" + "T" * 43


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def env(home: Path) -> dict[str, str]:
    return {"HOME": str(home)}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path | None = None, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ or {})
    return str(info.value)


# --- defaults and locations ----------------------------------------------------


def test_defaults_without_file_or_env(env, home):
    cfg = load_config(environ=env)
    assert cfg.state_dir == home / ".local/share/flame"
    assert cfg.log_level == "INFO"
    assert cfg.log_format == "text"
    assert cfg.api_url == "http://127.0.0.1:7080"
    assert cfg.token is None


def test_xdg_data_home_is_honoured(env, tmp_path):
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    assert load_config(environ=env).state_dir == tmp_path / "data/flame"
    assert default_state_dir(env) == tmp_path / "data/flame"


def test_relative_xdg_dirs_are_ignored(env, home):
    # The XDG spec requires ignoring relative values.
    env |= {"XDG_DATA_HOME": "data", "XDG_CONFIG_HOME": "cfg"}
    assert default_state_dir(env) == home / ".local/share/flame"
    assert default_config_path(env) == home / ".config/flame/config.toml"


def test_default_file_under_xdg_config_home(env, tmp_path):
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    write(tmp_path / "xdg/flame/config.toml", 'log_level = "debug"\n')
    assert load_config(environ=env).log_level == "DEBUG"


def test_default_file_under_home_config(env, home):
    write(home / ".config/flame/config.toml", 'log_format = "json"\n')
    assert load_config(environ=env).log_format == "json"


def test_file_values_are_loaded_and_normalised(env, tmp_path):
    path = write(
        tmp_path / "c.toml",
        f"""# comment
state_dir = "/srv/flame"
log_level = "warning"
log_format = "JSON"
api_url = "https://orch.example:8443/api"
token = "{TOKEN}"
""",
    )
    cfg = load_config(path, env)
    assert cfg == Config(
        state_dir=Path("/srv/flame"),
        log_level="WARNING",
        log_format="json",
        api_url="https://orch.example:8443/api",
        token=TOKEN,
    )


def test_environment_overrides_file(env, tmp_path):
    path = write(
        tmp_path / "c.toml",
        'log_level = "DEBUG"\nlog_format = "json"\ntoken = "flm_fromfile"\n',
    )
    env |= {
        "FLAME_LOG_LEVEL": "error",
        "FLAME_STATE_DIR": "/var/lib/flame",
        "FLAME_API_URL": "http://10.0.0.1:7070",
        "FLAME_TOKEN": TOKEN,
    }
    cfg = load_config(path, env)
    assert cfg.log_level == "ERROR"  # env
    assert cfg.log_format == "json"  # file, no env override
    assert cfg.state_dir == Path("/var/lib/flame")
    assert cfg.api_url == "http://10.0.0.1:7070"
    assert cfg.token == TOKEN


def test_empty_environment_variable_counts_as_unset(env, tmp_path):
    path = write(tmp_path / "c.toml", 'log_level = "DEBUG"\ntoken = "flm_fromfile"\n')
    env |= {"FLAME_LOG_LEVEL": "", "FLAME_TOKEN": ""}
    cfg = load_config(path, env)
    assert (cfg.log_level, cfg.token) == ("DEBUG", "flm_fromfile")


def test_flame_config_names_the_file(env, home, tmp_path):
    write(home / ".config/flame/config.toml", 'log_level = "ERROR"\n')
    other = write(tmp_path / "other.toml", 'log_level = "DEBUG"\n')
    env["FLAME_CONFIG"] = str(other)
    assert load_config(environ=env).log_level == "DEBUG"


def test_path_argument_beats_flame_config(env, tmp_path):
    env["FLAME_CONFIG"] = str(write(tmp_path / "env.toml", 'log_level = "ERROR"\n'))
    arg = write(tmp_path / "arg.toml", 'log_level = "DEBUG"\n')
    assert load_config(arg, env).log_level == "DEBUG"


def test_state_dir_paths_are_resolved(env, home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    relative = write(tmp_path / "etc/c.toml", 'state_dir = "state"\n')
    assert load_config(relative, env).state_dir == tmp_path / "etc/state"
    tilde = write(tmp_path / "t.toml", 'state_dir = "~/flame-state"\n')
    assert load_config(tilde, env).state_dir == home / "flame-state"
    env["FLAME_STATE_DIR"] = "run/state"
    assert load_config(relative, env).state_dir == tmp_path / "run/state"


def test_repr_never_shows_the_token():
    cfg = Config(state_dir=Path("/s"), token=TOKEN)
    for text in (repr(cfg), str(cfg), f"{cfg}"):
        assert TOKEN not in text
        assert "token='***'" in text
    assert "token=None" in repr(Config(state_dir=Path("/s")))


def test_config_is_frozen():
    cfg = Config(state_dir=Path("/s"))
    with pytest.raises(FrozenInstanceError):
        cfg.log_level = "DEBUG"  # type: ignore[misc]


# --- error paths ---------------------------------------------------------------


def test_toml_syntax_error_names_file_line_and_column(tmp_path):
    path = write(tmp_path / "c.toml", 'log_level = "INFO"\nlog_format = \n')
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    msg = str(info.value)
    assert msg.startswith(f"{path}:2:")
    assert "invalid TOML" in msg
    assert "line 2, column" in msg
    assert info.value.context["line"] == 2
    assert info.value.context["file"] == str(path)


def test_unknown_key_gets_did_you_mean_hint_and_line(tmp_path):
    path = write(tmp_path / "c.toml", '# settings\nlog_levl = "INFO"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    msg = str(info.value)
    assert msg.startswith(f"{path}:2: key 'log_levl': unknown key")
    assert "did you mean 'log_level'?" in msg
    assert (
        "Valid keys: api_url, ca_file, clmc_url, log_format, log_level, pce_url, state_dir, token."
        in msg
    )
    assert info.value.as_dict()["key"] == "log_levl"


def test_unknown_key_without_close_match_has_no_hint(tmp_path):
    msg = load_error(write(tmp_path / "c.toml", 'colour = "red"\n'))
    assert "key 'colour': unknown key" in msg
    assert "did you mean" not in msg
    assert "Valid keys:" in msg


def test_table_is_reported_as_unknown_key(tmp_path):
    msg = load_error(write(tmp_path / "c.toml", '[server]\nport = "1"\n'))
    assert f"{tmp_path / 'c.toml'}:1: key 'server': unknown key" in msg


@pytest.mark.parametrize(
    ("line", "key", "kind"),
    [
        ("log_level = 10", "log_level", "an integer"),
        ("api_url = true", "api_url", "a boolean"),
        ('state_dir = ["a"]', "state_dir", "an array"),
        ("log_format = 1.5", "log_format", "a float"),
        ("token = 2026-01-01", "token", "a date/time"),
    ],
)
def test_wrong_type_names_key_type_and_fix(tmp_path, line, key, kind):
    path = write(tmp_path / "c.toml", line + "\n")
    msg = load_error(path)
    assert f"{path}:1: key '{key}': must be a string, got {kind}" in msg
    assert f'Quote the value, e.g. {key} = "' in msg


def test_invalid_log_level_in_file(tmp_path):
    path = write(tmp_path / "c.toml", 'log_level = "LOUD"\n')
    msg = load_error(path)
    assert f"{path}:1: key 'log_level'" in msg
    assert "invalid log level 'LOUD'" in msg
    assert "DEBUG, INFO, WARNING, ERROR, CRITICAL" in msg
    assert "remove the key to use the default" in msg


def test_invalid_log_format_in_environment():
    with pytest.raises(ConfigError) as info:
        load_config(environ={"FLAME_LOG_FORMAT": "xml"})
    msg = str(info.value)
    assert msg.startswith("environment variable FLAME_LOG_FORMAT:")
    assert "invalid log format 'xml'; expected one of text, json" in msg
    assert "unset FLAME_LOG_FORMAT" in msg
    assert info.value.context == {"env_var": "FLAME_LOG_FORMAT", "key": "log_format"}


@pytest.mark.parametrize(
    "url",
    ["ftp://h", "localhost:7070", "http://", "http://h:port", "http://h:99999", "orch"],
)
def test_invalid_api_url(url):
    msg = load_error(environ={"FLAME_API_URL": url})
    assert f"invalid API URL {url!r}" in msg
    assert "FLAME_API_URL" in msg


def test_malformed_token_is_rejected_without_echoing_it(tmp_path):
    path = write(tmp_path / "c.toml", 'token = "flm_secret part"\n')
    msg = load_error(path)
    assert "key 'token'" in msg
    assert "value not shown" in msg
    assert "secret" not in msg


def test_empty_state_dir_is_rejected(tmp_path):
    msg = load_error(write(tmp_path / "c.toml", 'state_dir = " "\n'))
    assert "key 'state_dir': must not be empty" in msg


def test_explicit_missing_file_is_an_error(tmp_path):
    path = tmp_path / "nope.toml"
    msg = load_error(path)
    assert f"{path}: config file not found (named by the caller)" in msg
    msg = load_error(environ={"FLAME_CONFIG": str(path)})
    assert f"{path}: config file not found (named by FLAME_CONFIG)" in msg


def test_unreadable_config_path(tmp_path):
    msg = load_error(tmp_path)  # a directory
    assert f"{tmp_path}: cannot read config file" in msg


def test_non_utf8_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_bytes(b'log_level = "\xff"\n')
    assert f"{path}: config file is not valid UTF-8" in load_error(path)


def test_config_error_is_a_user_error(tmp_path):
    with pytest.raises(UserError) as info:
        load_config(write(tmp_path / "c.toml", "x = 1\n"), {})
    assert info.value.http_status == 400
    assert info.value.as_dict()["error"] == "config_error"


# --- saving --------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_save_creates_private_file_that_loads_back(tmp_path):
    path = tmp_path / "new/dir/config.toml"
    save_config_values(path, {"token": TOKEN, "api_url": "https://o.example"})
    assert mode(path) == 0o600
    cfg = load_config(path, {})
    assert (cfg.token, cfg.api_url) == (TOKEN, "https://o.example")


def test_save_updates_in_place_and_keeps_the_rest(tmp_path):
    path = write(
        tmp_path / "c.toml",
        '# my settings\nlog_level = "DEBUG"  # noisy\ntoken = "flm_old"\n',
    )
    path.chmod(0o644)
    save_config_values(path, {"token": TOKEN, "log_format": "json"})
    text = path.read_text()
    assert text.startswith('# my settings\nlog_level = "DEBUG"  # noisy\n')
    assert text.count("token =") == 1
    assert "flm_old" not in text
    assert tomllib.loads(text) == {"log_level": "DEBUG", "token": TOKEN, "log_format": "json"}
    assert mode(path) == 0o600  # tightened: the file now holds a token


def test_save_falls_back_to_rewriting_when_lines_cannot_be_edited(tmp_path):
    # A multi-line string defeats the line editor; the result must still be right.
    path = write(tmp_path / "c.toml", 'token = """\nflm_old"""\nlog_level = "ERROR"\n')
    save_config_values(path, {"token": TOKEN})
    assert tomllib.loads(path.read_text()) == {"token": TOKEN, "log_level": "ERROR"}


def test_empty_token_clears_it(tmp_path):
    path = tmp_path / "c.toml"
    save_config_values(path, {"token": TOKEN})
    save_config_values(path, {"token": ""})
    assert load_config(path, {}).token is None


def test_save_round_trips_awkward_characters(tmp_path):
    odd = 'we"ird\\dir\twith\nnewline'
    path = tmp_path / "c.toml"
    save_config_values(path, {"state_dir": f"/srv/{odd}"})
    assert load_config(path, {}).state_dir == Path(f"/srv/{odd}")


def test_save_rejects_unknown_key_without_touching_file(tmp_path):
    path = tmp_path / "c.toml"
    with pytest.raises(ConfigError) as info:
        save_config_values(path, {"tokn": TOKEN})
    assert "unknown key (did you mean 'token'?)" in str(info.value)
    assert TOKEN not in str(info.value)
    assert not path.exists()


def test_save_rejects_invalid_value_and_keeps_old_file(tmp_path):
    path = write(tmp_path / "c.toml", 'log_level = "INFO"\n')
    with pytest.raises(ConfigError, match="invalid log level 'LOUD'"):
        save_config_values(path, {"log_level": "LOUD"})
    assert path.read_text() == 'log_level = "INFO"\n'


def test_save_refuses_to_clobber_broken_file(tmp_path):
    path = write(tmp_path / "c.toml", "log_level = \n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        save_config_values(path, {"token": TOKEN})
    assert path.read_text() == "log_level = \n"


def test_save_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "c.toml"
    save_config_values(path, {"log_level": "DEBUG"})
    save_config_values(path, {"log_level": "ERROR"})
    assert os.listdir(tmp_path) == ["c.toml"]


@settings(database=None)
@given(st.text())
def test_toml_string_round_trips(value):
    assert tomllib.loads(f"k = {_toml_string(value)}") == {"k": value}
