#!/usr/bin/env python3
"""Golden renderings of chat templates, made with transformers' own rendering function.

Renders every chat template of the project against a fixed set of conversations with
`transformers.utils.chat_template_utils.render_jinja_template` -- the function (and the
compiled, cached jinja2 environment) that `PreTrainedTokenizerBase.apply_chat_template` uses --
and writes one file per template to tests/golden/templates/<name>.json. tests/templates.rs
checks that recipe's minijinja renderer reproduces every text byte for byte (or raises the same
error).

Templates:
  - every *.jinja and the `chat_template` of every *.tokenizer_config.json in
    tests/golden/templates/sources/ (verbatim copies of ../shared/assets/chat-templates/hf, MIT;
    see the NOTICE there). `--copy-sources` (re)copies them from ../shared first;
  - every built-in template, templates/*.jinja;
  - tests/golden/templates/probes/*.jinja: not chat templates, but probes of the Python
    compatibility (printing of None/True/floats/lists/dicts, tojson arguments, string and dict
    methods, loop controls, namespace, strftime_now).

Special tokens as apply_chat_template passes them (its `special_tokens_map`): the bos/eos/unk/pad
tokens of the tokenizer_config.json when it names them, else bos "<s>" and eos "</s>".
`strftime_now` is pinned: the reference's clock reads FIXED_NOW, and the Rust tests pin the same
date with `ChatTemplate::with_fixed_date`.

Run (reference stack of scripts/reference/requirements.txt; jinja2 comes with torch):
  PYTHONPATH=/root/.cache/recipe/ref-py:/root/.cache/recipe/torch-2.11.0 \
    python3 -S scripts/reference/template_goldens.py [--copy-sources] [--check]
`--check` compares with the committed goldens instead of writing (exit status 1 on a difference).
"""

import datetime as _dt
import glob
import json
import os
import shutil
import sys

import jinja2
import transformers
from transformers.utils import chat_template_utils as ctu

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
GOLDEN = os.path.join(ROOT, "tests", "golden", "templates")
SOURCES = os.path.join(GOLDEN, "sources")
PROBES = os.path.join(GOLDEN, "probes")
SHARED = os.path.normpath(os.path.join(ROOT, "..", "shared", "assets", "chat-templates", "hf"))
BUILTIN = os.path.join(ROOT, "templates")

# The pinned clock: 2025-03-09 10:30:00 (a single-digit day shows %d's zero padding).
FIXED_NOW = _dt.datetime(2025, 3, 9, 10, 30, 0)


class _FixedDatetime(_dt.datetime):
    @classmethod
    def now(cls, tz=None):  # noqa: ARG003
        return FIXED_NOW


# transformers' strftime_now reads the module-level `datetime` name at call time.
ctu.datetime = _FixedDatetime

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {"type": "string", "description": "The city and country, e.g. Paris, France"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Temperature unit"},
                },
                "required": ["location"],
            },
        },
    }
]

CASES = [
    {
        "name": "two_turns",
        "messages": [
            {"role": "user", "content": "Hi there!"},
            {"role": "assistant", "content": "Hello! How can I help you today?"},
            {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "content": "2 + 2 = 4."},
        ],
    },
    {
        "name": "system_multi_turn",
        "messages": [
            {"role": "system", "content": "You are a terse assistant. Answer in one line."},
            {"role": "user", "content": "Name a prime number."},
            {"role": "assistant", "content": "7"},
            {"role": "user", "content": "  And an even one?  "},
            {"role": "assistant", "content": "2\n\nIt is the only even prime."},
            {"role": "user", "content": "Thanks."},
            {"role": "assistant", "content": "You're welcome."},
        ],
    },
    {
        "name": "unicode",
        "messages": [
            {"role": "user", "content": "Café, naïve, Straße — 日本語で答えて。😀👍🏽"},
            {"role": "assistant", "content": "はい、わかりました！ Ça va? ¿Qué tal? 🎉 «ok» \"quoted\" <tag> & 'x'"},
        ],
    },
    {
        "name": "tool_call",
        "tools": TOOLS,
        "messages": [
            {"role": "system", "content": "You can call tools."},
            {"role": "user", "content": "What's the weather in Paris?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "call0Abc9",
                        "type": "function",
                        "function": {
                            "name": "get_current_weather",
                            "arguments": {"location": "Paris, France", "unit": "celsius"},
                        },
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call0Abc9", "name": "get_current_weather", "content": "{\"temperature\": 22.5, \"sky\": \"clear\"}"},
            {"role": "assistant", "content": "It is 22.5 °C and clear in Paris."},
        ],
    },
    {
        "name": "generation_prompt",
        "add_generation_prompt": True,
        "messages": [
            {"role": "user", "content": "Hi there!"},
            {"role": "assistant", "content": "Hello! How can I help you today?"},
            {"role": "user", "content": "Tell me a joke."},
        ],
    },
    {
        "name": "system_generation_prompt",
        "add_generation_prompt": True,
        "messages": [
            {"role": "system", "content": "You are a pirate."},
            {"role": "user", "content": "Where is the treasure?"},
        ],
    },
]


def special_tokens(config):
    """apply_chat_template's special_tokens_map for a tokenizer_config.json (or none)."""
    out = {}
    for key in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"):
        v = (config or {}).get(key)
        if isinstance(v, dict):
            v = v.get("content")
        if isinstance(v, str):
            out[key] = v
    out.setdefault("bos_token", "<s>")
    out.setdefault("eos_token", "</s>")
    return out


def config_template(config):
    t = config.get("chat_template")
    if isinstance(t, list):
        t = next((x["template"] for x in t if x.get("name") == "default"), None)
    return t


def templates():
    """(golden name, source description for the Rust test, template text, special tokens)."""
    out = []
    for path in sorted(glob.glob(os.path.join(SOURCES, "*.jinja"))):
        base = os.path.basename(path)
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
        out.append(("hf-" + base[: -len(".jinja")], {"file": "sources/" + base}, text, special_tokens(None)))
    for path in sorted(glob.glob(os.path.join(SOURCES, "*.tokenizer_config.json"))):
        base = os.path.basename(path)
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        name = "hf-" + base[: -len(".tokenizer_config.json")] + "-config"
        out.append((name, {"tokenizer_config": "sources/" + base}, config_template(config), special_tokens(config)))
    for path in sorted(glob.glob(os.path.join(PROBES, "*.jinja"))):
        base = os.path.basename(path)
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
        out.append(("probe-" + base[: -len(".jinja")], {"file": "probes/" + base}, text, special_tokens(None)))
    for path in sorted(glob.glob(os.path.join(BUILTIN, "*.jinja"))):
        base = os.path.basename(path)[: -len(".jinja")]
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
        out.append(("builtin-" + base, {"builtin": base}, text, special_tokens(None)))
    return out


def render(text, case, specials):
    try:
        rendered, _ = ctu.render_jinja_template(
            conversations=[json.loads(json.dumps(case["messages"]))],
            tools=case.get("tools"),
            chat_template=text,
            add_generation_prompt=case.get("add_generation_prompt", False),
            **specials,
        )
        return {"text": rendered[0]}
    except jinja2.exceptions.TemplateError as e:
        # raise_exception() raises TemplateError itself; other template errors are subclasses
        kind = "raise_exception" if type(e) is jinja2.exceptions.TemplateError else type(e).__name__
        return {"error": str(e), "error_kind": kind}
    except Exception as e:  # noqa: BLE001 -- e.g. a TypeError inside the template
        return {"error": f"{type(e).__name__}: {e}", "error_kind": type(e).__name__}


def copy_sources():
    os.makedirs(SOURCES, exist_ok=True)
    for path in sorted(glob.glob(os.path.join(SHARED, "*.jinja")) + glob.glob(os.path.join(SHARED, "*.tokenizer_config.json"))):
        shutil.copyfile(path, os.path.join(SOURCES, os.path.basename(path)))


def main():
    args = sys.argv[1:]
    if "--copy-sources" in args:
        copy_sources()
    check = "--check" in args
    different = []
    for name, source, text, specials in templates():
        doc = {
            "template": name,
            "source": source,
            "generated_by": "scripts/reference/template_goldens.py",
            "transformers": transformers.__version__,
            "jinja2": jinja2.__version__,
            "fixed_now": FIXED_NOW.isoformat(),
            "special_tokens": specials,
            "cases": [],
        }
        for case in CASES:
            entry = {
                "name": case["name"],
                "messages": case["messages"],
                "add_generation_prompt": case.get("add_generation_prompt", False),
            }
            if "tools" in case:
                entry["tools"] = case["tools"]
            entry.update(render(text, case, specials))
            doc["cases"].append(entry)
        out = json.dumps(doc, ensure_ascii=False, indent=1) + "\n"
        path = os.path.join(GOLDEN, name + ".json")
        if check:
            with open(path, encoding="utf-8") as f:
                if f.read() != out:
                    different.append(name)
        else:
            with open(path, "w", encoding="utf-8", newline="\n") as f:
                f.write(out)
        status = ", ".join(f"{c['name']}:{'ok' if 'text' in c else 'error'}" for c in doc["cases"])
        print(f"{name}: {status}")
    if different:
        print("differ from the committed goldens:", ", ".join(different))
        sys.exit(1)


if __name__ == "__main__":
    main()
