"""The allow-list of a served app (ui/access.py): the policy's matching and its file's errors, and
the model picker under AppTest, open and served. No test reaches the hub: its size lookup is
replaced wherever a size limit is checked."""
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import app_harness
from engine.errors import UserError
from engine.models import hub
from engine.models.loading import ALIASES
from engine.storage import explorer_format as export_format
from ui import access, serve
from ui.sidebar import OTHER

ROOT = Path(__file__).resolve().parents[2]
REFUSED = "This server does not open that model: pick one from its list."


@pytest.fixture
def tree(tmp_path, tiny_models):
    """models/ (the root): a tiny BERT, a symlink out of it, an export whose source lies outside
    it; outside/: a tiny BERT beside the root."""
    root = tmp_path / "models"
    shutil.copytree(tiny_models["bert"], root / "bert")
    shutil.copytree(tiny_models["bert"], tmp_path / "outside")
    (root / "escape").symlink_to(tmp_path / "outside", target_is_directory=True)
    (root / "inner").symlink_to(root / "bert", target_is_directory=True)  # a symlink that stays inside
    for name, source in (("export-etc", "/etc/model"), ("export-minilm", "minilm")):
        (root / name).mkdir()
        (root / name / "manifest.json").write_text(json.dumps({
            "format": export_format.FORMAT, "version": export_format.VERSION, "files": {},
            "model": {"ref": source}, "recipe": {"bits": 3}}))
    return tmp_path


def policy(tree, **fields) -> access.Policy:
    return access.Policy.from_dict({"root": "models", "folders": ["bert"], **fields}, tree)


def serve_with(tree, monkeypatch, **fields) -> Path:
    """Write a policy file and name it in EXPLORER_ALLOW, as `python -m ui.serve --allow` does."""
    path = tree / f"allow-{len(list(tree.glob('allow-*.json')))}.json"
    path.write_text(json.dumps({"root": "models", "folders": ["bert"], **fields}))
    monkeypatch.setenv(access.ENV, str(path))
    return path


# ---------------------------------------------------------------------------------------
# The policy
# ---------------------------------------------------------------------------------------


def test_matching_aliases_hub_ids_and_folders(tree):
    p = policy(tree, aliases=["minilm"], hub=["gpt2", "org/*"], typing=True)
    bert = os.path.realpath(tree / "models" / "bert")
    assert p.listed == ("minilm", "gpt2", bert) and p.default == "minilm"
    assert p.check("minilm") == "minilm" and p.check(" gpt2 ") == "gpt2"
    assert p.check("org/any-model") == "org/any-model"  # a pattern, typed
    assert p.check("./bert") == p.check(bert) == p.check("./inner") == p.check("./bert/../bert") == bert
    assert p.check("./escape/../bert") == bert  # '..' taken on the text: what opens is the real path returned
    refused = ["smollm2", "gpt2-xl", "other/model", "org/..", "org/a/b", "/etc", "/root", "../outside",
               str(tree / "outside"), "./escape", "./escape/sub", "./bert/../../outside", "~/models", "./bert\0", ""]
    for ref in refused:
        with pytest.raises(access.Refused) as e:
            p.check(ref)
        assert str(e.value) == REFUSED, ref
    # only what the picker lists: the pattern and a path inside root are not
    for ref in ("org/any-model", "./export-etc"):
        with pytest.raises(access.Refused):
            p.check(ref, listed_only=True)
    assert p.check("./bert", listed_only=True) == bert
    assert policy(tree).typing is False and policy(tree).aliases == tuple(ALIASES)


def test_a_path_outside_root_is_refused_before_the_filesystem_is_touched(tree, monkeypatch):
    p = policy(tree, typing=True)
    seen, results, this_thread = [], [], threading.get_ident()

    def watched(fn):
        def call(*args, **kwargs):  # other threads (a model's background work) are let through
            if threading.get_ident() == this_thread:
                seen.append(args)
            return fn(*args, **kwargs)
        return call

    with monkeypatch.context() as m:
        for module, name in [(os, "stat"), (os, "lstat"), (os, "scandir"), (os, "readlink"), (os.path, "realpath"),
                             (os.path, "exists"), (os.path, "lexists"), (os.path, "isdir"), (os.path, "isfile")]:
            m.setattr(module, name, watched(getattr(module, name)))
        for ref in ("/etc", "/root", "/etc/passwd", "../outside", "./bert/../../outside", "~root"):
            try:
                p.check(ref)
            except access.Refused as e:
                results.append(str(e))
        assert results == [REFUSED] * 6 and seen == []
        p.check("./bert")  # the watch works: a path inside root is resolved
    assert seen


def test_hub_size_limit(tree, monkeypatch):
    sizes = {"org/big": 3 * 2**30, "org/small": 200 * 2**20}
    asked = []

    def download_bytes(repo):
        asked.append(repo)
        if repo not in sizes:
            raise UserError("404")
        return sizes[repo]

    monkeypatch.setattr(hub, "download_bytes", download_bytes)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    p = policy(tree, hub=["org/*"], max_download_bytes=2**30, typing=True)
    assert p.check("org/small") == "org/small" and p.check("org/small") == "org/small"
    with pytest.raises(access.Refused, match=r"^org/big has 3\.00 GiB of weights, over this server's download "
                                             r"limit of 1\.00 GiB: pick a smaller model\.$"):
        p.check("org/big")
    assert p.check("org/big", download=False) == "org/big"  # its config alone (Will it fit?)
    with pytest.raises(access.Refused, match="could not ask the hub how large org/gone is"):
        p.check("org/gone")
    assert asked == ["org/small", "org/big", "org/gone"]  # each asked once, never for a refused id
    with pytest.raises(access.Refused, match=f"^{REFUSED}$"):
        p.check("elsewhere/big")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing is downloaded: no size counts
    assert p.check("org/never-asked") == "org/never-asked" and "org/never-asked" not in asked


def test_weight_bytes_counts_what_from_pretrained_downloads():
    files = [("model-00001-of-00002.safetensors", 4), ("model-00002-of-00002.safetensors", 2),
             ("model.safetensors.index.json", 1), ("pytorch_model.bin", 9), ("onnx/model.safetensors", 50),
             ("consolidated.safetensors", 6), ("config.json", 1)]
    assert hub.weight_bytes(files) == 6
    assert hub.weight_bytes([("pytorch_model.bin", 9), ("tf_model.h5", 9), ("README.md", 1)]) == 9
    assert hub.weight_bytes([("weights.pt", 3), ("model.gguf", 5), ("sub/x.pt", 7), ("vocab.txt", None)]) == 8


@pytest.mark.parametrize("text, message", [
    ("{", "not JSON"),
    ("[]", "must be a JSON object"),
    ('{"alias": ["minilm"]}', "unknown field 'alias'"),
    ('{"aliases": ["gpt9"]}', "aliases: 'gpt9' is not an alias"),
    ('{"aliases": "minilm"}', "aliases: must be a list of names"),
    ('{"hub": ["org/../x"]}', "hub: 'org/../x' is neither a hub id nor a pattern"),
    ('{"root": "no-such-folder"}', "root: 'no-such-folder' is not a folder"),
    ('{"root": "models", "folders": ["../outside"]}', "folders: '../outside' is not a folder or file inside root"),
    ('{"root": "models", "folders": ["escape"]}', "folders: 'escape' is not a folder or file inside root"),
    ('{"folders": ["bert"]}', "folders: needs a root"),
    ('{"max_download_bytes": -1}', "max_download_bytes: must be a whole number"),
    ('{"max_download_bytes": "1 GB"}', "max_download_bytes: must be a whole number"),
    ('{"typing": "yes"}', "typing: must be true or false"),
    ('{"aliases": []}', "lists no model to pick"),
])
def test_policy_file_errors_are_one_line_naming_the_field(tree, text, message):
    path = tree / "allow.json"
    path.write_text(text)
    with pytest.raises(access.PolicyError) as e:
        access.Policy.from_file(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value) and "\n" not in str(e.value)


def test_the_example_policy_loads(tmp_path):
    (tmp_path / "assets").mkdir()
    (tmp_path / "exports" / "minilm-int3").mkdir(parents=True)  # its root: the checkout's exports/
    shutil.copy(ROOT / "assets" / "allow.example.json", tmp_path / "assets")
    p = access.Policy.from_file(tmp_path / "assets" / "allow.example.json")
    assert p.aliases == tuple(ALIASES) and p.typing and p.max_download_bytes == 10**9
    assert p.root == os.path.realpath(tmp_path / "exports")
    assert p.listed == (*ALIASES, "sentence-transformers/all-MiniLM-L6-v2", os.path.realpath(tmp_path / "exports" / "minilm-int3"))


def test_serve_stops_at_a_bad_policy_in_one_line(tree, monkeypatch, capsys):
    assert serve.split_option(["--allow=a.json", "--server.address", "0.0.0.0"], "--allow") == ("a.json", ["--server.address", "0.0.0.0"])
    bad = tree / "allow.json"
    bad.write_text('{"typing": 1}')
    done = subprocess.run([sys.executable, "-m", "ui.serve", "--allow", str(bad), "--server.headless", "true"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr == f"error: --allow: {bad}: typing: must be true or false\n"
    monkeypatch.setenv(access.ENV, str(tree / "missing.json"))  # the environment's file, in process
    monkeypatch.setattr(sys, "argv", ["ui.serve"])
    assert serve.main() == 2
    assert capsys.readouterr().err.startswith(f"error: {access.ENV}: {tree / 'missing.json'}: cannot read it")


# ---------------------------------------------------------------------------------------
# The picker, under AppTest
# ---------------------------------------------------------------------------------------


def start(page="pages/fit.py", **params):
    """The app on a page that loads no model (Will it fit?) unless told otherwise."""
    return app_harness.start(page, timeout=120, **params)


def type_ref(at, ref: str):
    at.selectbox(key="ctl_source").set_value(OTHER).run()
    at.text_input(key="ctl_ref").input(ref).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def errors(at) -> list[str]:
    return [e.value for e in at.error]


def test_open_mode_opens_a_typed_local_folder(tiny_models, monkeypatch):
    monkeypatch.delenv(access.ENV, raising=False)
    at = start()
    assert at.selectbox(key="ctl_source").options == [f"{a} ({ALIASES[a].kind})" for a in ALIASES] + [OTHER]
    type_ref(at, tiny_models["bert"])
    assert errors(at) == [] and at.session_state["ctl_model"] == tiny_models["bert"]
    at.switch_page("pages/explore.py").run()
    assert errors(at) == [] and at.session_state["_ctx"].ref == tiny_models["bert"]


def test_served_lists_only_the_allowed_and_refuses_the_rest_in_one_line(tree, monkeypatch):
    serve_with(tree, monkeypatch, aliases=["minilm"], hub=["gpt2", "org/*"], typing=True)
    at = start(bits=4)
    assert at.selectbox(key="ctl_source").options == ["minilm (encoder)", "gpt2", "bert (folder)", OTHER]
    assert any("This server limits the models" in c.value for c in at.sidebar.caption)
    bert = os.path.realpath(tree / "models" / "bert")
    type_ref(at, "./bert")  # a folder inside root, typed
    assert errors(at) == [] and at.session_state["ctl_model"] == bert
    for ref in ("/etc", "/root", str(tree / "outside"), "./escape", "../outside", "./bert/../../outside",
                "smollm2", "gpt2-xl", "./export-etc"):
        at.text_input(key="ctl_ref").input(ref).run()
        assert errors(at) == [REFUSED], ref
        assert at.session_state["ctl_model"] == bert and at.query_params["model"] == bert  # the model kept
        assert at.session_state["_recipe"].describe() == "int4 g128"  # and the recipe (not the export's bits 3)
    at.text_input(key="ctl_ref").input("./export-minilm").run()  # an export whose source is allowed
    assert errors(at) == [] and at.session_state["_recipe"].bits == 3
    at.text_input(key="ctl_ref").input("./bert").run()
    at.switch_page("pages/explore.py").run()  # the folder inside root loads
    assert errors(at) == [] and at.session_state["_ctx"].ref == bert


def test_served_refuses_a_link_to_a_path_and_keeps_the_default(tree, monkeypatch):
    serve_with(tree, monkeypatch, typing=True)
    for ref in ("/etc", "/root", str(tree / "outside"), str(tree / "models" / "escape")):
        at = start(model=ref, bits=3)
        assert errors(at) == [REFUSED] and "/" not in REFUSED and "config" not in REFUSED
        assert at.session_state["ctl_model"] == "minilm" and "model" not in at.query_params
        assert at.session_state["_recipe"].bits == 3  # the rest of the link is kept


def test_served_without_typing_offers_no_text_field_and_refuses_other_links(tree, monkeypatch):
    serve_with(tree, monkeypatch, aliases=["smollm2"], hub=["gpt2", "org/*"], folders=[])
    at = start()
    assert at.selectbox(key="ctl_source").options == ["smollm2 (causal-lm)", "gpt2"]
    assert not [t for t in at.text_input if t.key == "ctl_ref"]
    assert at.session_state["ctl_model"] == "smollm2"  # the first listed: minilm is not
    assert at.selectbox(key="fit_model").options[-1] == "the sidebar's model: smollm2"  # no typed config either
    for ref in ("org/x", "./bert", "minilm"):
        at = start(model=ref)
        assert errors(at) == [REFUSED] and at.session_state["ctl_model"] == "smollm2"


def test_served_refuses_a_hub_model_over_the_size_limit(tree, monkeypatch):
    monkeypatch.setattr(hub, "download_bytes", lambda repo: {"org/big": 5 * 2**30, "org/small": 2**20}[repo])
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    serve_with(tree, monkeypatch, hub=["org/*"], max_download_bytes=2**30, typing=True)
    at = type_ref(start(bits=4), "org/big")
    assert errors(at) == ["org/big has 5.00 GiB of weights, over this server's download limit of 1.00 GiB: "
                          "pick a smaller model."]
    assert at.session_state["ctl_model"] == "minilm" and at.session_state["_recipe"].bits == 4
    at.text_input(key="ctl_ref").input("org/small").run()
    assert errors(at) == [] and at.session_state["ctl_model"] == "org/small"


def test_a_policy_file_that_cannot_be_used_opens_nothing(tree, monkeypatch):
    bad = tree / "allow.json"
    bad.write_text('{"root": "nowhere"}')
    monkeypatch.setenv(access.ENV, str(bad))
    at = start("pages/explore.py")
    assert errors(at) == ["This server's list of allowed models cannot be read (its log says why): no model opens."]
    assert "_ctx" not in at.session_state  # the sidebar stopped the run before any page
