#!/usr/bin/env python3
"""Developer-only check: render every templates/*.jinja the way transformers'
apply_chat_template does (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks,
loopcontrols, raise_exception global, tojson without ASCII escaping).

Usage: python3 scripts/reference/render_templates.py [DIR]   (needs `pip install jinja2`)
Conversation: [system, user, assistant, user, assistant]; a template that raises on
the system message is rendered again without it. Exit status 1 if any template fails.
"""
import glob
import json
import os
import sys

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(msg):
    raise jinja2.exceptions.TemplateError(msg)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception

SYSTEM = {"role": "system", "content": "You are terse."}
CONV = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]
KW = dict(bos_token="<s>", eos_token="</s>", add_generation_prompt=False)


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'templates')
    failures = []
    for path in sorted(glob.glob(os.path.join(root, "*.jinja"))):
        name = os.path.basename(path)[: -len(".jinja")]
        with open(path, encoding="utf-8", newline="") as f:
            src = f.read()
        try:
            tmpl = env.from_string(src)
            try:
                out, note = tmpl.render(messages=[SYSTEM] + CONV, **KW), "with system"
            except jinja2.exceptions.TemplateError as e:
                out, note = tmpl.render(messages=CONV, **KW), f"without system ({e})"
            tmpl.render(messages=CONV, **{**KW, "add_generation_prompt": True})
        except Exception as e:  # noqa: BLE001
            failures.append(name)
            print(f"FAIL {name}: {type(e).__name__}: {e}")
            continue
        print(f"ok   {name} [{note}]\n     {out!r}")
    if failures:
        print("failed:", ", ".join(failures))
        sys.exit(1)


if __name__ == "__main__":
    main()
