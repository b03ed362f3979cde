"""Golden for recipe's OpenTelemetry metrics endpoint (src/track/otel.rs): drives Axolotl's own
OpenTelemetryMetricsCallback (OpenTelemetry SDK 1.45.2, its Prometheus exporter 0.66b2, prometheus_client
0.26.0's HTTP server) through a fixed sequence of on_train_begin / on_step_end / on_log / on_evaluate calls,
as transformers' Trainer makes them in a 4-step run (logging every 2 steps, evaluating at steps 2 and 4),
scrapes http://127.0.0.1:PORT/metrics after several of the calls, and writes the calls, the scrapes, the
response's Content-Type and a table of prometheus_client's number formatting to
tests/golden/otel/callback.json. tests/otel.rs replays the calls into recipe's meter and compares the text.

The callback is loaded from its file (axolotl.utils.callbacks' __init__ imports the whole training stack);
it imports transformers and axolotl.utils.logging. Versions: scripts/reference/requirements-otel.txt
(OpenTelemetry, prometheus_client) and scripts/reference/requirements.txt (transformers). Axolotl's source at
commit 067b021c8b87a9e5e380b9173c704cf7340e30f5:
  mkdir -p /tmp/axsrc && git --git-dir=AXOLOTL_GIT_DIR archive 067b021c8b87a9e5e380b9173c704cf7340e30f5 src \\
    | tar -x -C /tmp/axsrc
Run from the repository root (RECIPE_CACHE=/root/.cache/recipe; /tmp/pyx holds pyyaml and packaging):
  PYTHONPATH=/tmp/axsrc/src:$RECIPE_CACHE/ref-otel:$RECIPE_CACHE/ref-py:$RECIPE_CACHE/torch-2.11.0:/tmp/pyx \\
    python3 -S scripts/reference/otel_goldens.py [AXOLOTL_SRC=/tmp/axsrc/src]
"""
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import socket
import sys
import urllib.request
from pathlib import Path

import opentelemetry.sdk.version
from prometheus_client.utils import floatToGoString
from transformers import TrainerControl, TrainerState

assert opentelemetry.sdk.version.__version__ == "1.45.2", opentelemetry.sdk.version.__version__
assert importlib.metadata.version("prometheus_client") == "0.26.0"
assert importlib.metadata.version("opentelemetry-exporter-prometheus") == "0.66b2"

AXOLOTL_SRC = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/axsrc/src")
CALLBACK = AXOLOTL_SRC / "axolotl/utils/callbacks/opentelemetry.py"
# sha256 of the file at Axolotl commit 067b021c (git blob 3f7e56b78208d1349c4d285aa8b1e7b1b8cf244d).
CALLBACK_SHA256 = "02df4b8374d16a0ba8ab2421c4b485d33b75055bb6f1e15962b360516f5dcba9"
assert hashlib.sha256(CALLBACK.read_bytes()).hexdigest() == CALLBACK_SHA256, CALLBACK

OUT = Path("tests/golden/otel/callback.json")

spec = importlib.util.spec_from_file_location("axolotl_opentelemetry_callback", CALLBACK)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
assert module.OPENTELEMETRY_AVAILABLE

# A free port on the loopback interface.
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    PORT = s.getsockname()[1]


class Cfg:
    otel_metrics_host = "127.0.0.1"
    otel_metrics_port = PORT


callback = module.OpenTelemetryMetricsCallback(Cfg())
assert callback.metrics_enabled
state, control = TrainerState(), TrainerControl()

# What transformers' Trainer calls in a 4-step epoch with logging_steps 2 and eval_steps 2: on_step_end every
# step (state.epoch already advanced), on_log at logging steps (logs with learning_rate, grad_norm, loss,
# epoch), and at evaluations on_log with the evaluation's metrics (plus epoch: Trainer.log adds it to the dict
# it is given, which is the one on_evaluate then receives). The second evaluation carries a preference
# metric with a slash, an integer, a boolean, a string (not a number: skipped), a name OpenTelemetry refuses
# (a space: logged and skipped), extreme numbers; one log has memory_usage (unit MB), which Axolotl's
# trainer never logs but the callback would serve.
EVAL_1 = {"eval_loss": 2.3125, "eval_runtime": 0.5, "eval_samples_per_second": 8.0, "eval_steps_per_second": 2.0}
EVAL_2 = {
    "eval_loss": 1.0986122886681098,
    "eval_runtime": 0.25,
    "eval_samples_per_second": 12345678.9,
    "eval_steps_per_second": 1e-05,
    "eval_rewards/chosen": -0.03125,
    "eval_count": 3,
    "eval_flag": True,
    "eval_note": "text",
    "eval_bad name": 1.0,
    "eval_tiny": 1.5e-7,
    "eval_big": 1e16,
}
calls = []


def call(name, **kw):
    calls.append({"call": name, **kw})
    if name == "on_train_begin":
        callback.on_train_begin(None, state, control)
    elif name == "on_step_end":
        state.global_step += 1
        state.epoch = kw["epoch"]
        callback.on_step_end(None, state, control)
    elif name == "on_log":
        callback.on_log(None, state, control, logs=dict(kw["logs"]))
    elif name == "on_evaluate":
        callback.on_evaluate(None, state, control, metrics=dict(kw["metrics"]))
    else:
        raise ValueError(name)


scrapes = []
content_type = None


def scrape():
    global content_type
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics") as r:
        content_type = r.headers["Content-Type"]
        scrapes.append({"after_calls": len(calls), "text": r.read().decode()})


call("on_train_begin")
scrape()
call("on_step_end", epoch=0.25)
scrape()
call("on_step_end", epoch=0.5)
call("on_log", logs={"loss": 2.4375, "grad_norm": 1.25, "learning_rate": 0.0002, "epoch": 0.5})
scrape()
call("on_log", logs={**EVAL_1, "epoch": 0.5})
call("on_evaluate", metrics={**EVAL_1, "epoch": 0.5})
scrape()
call("on_step_end", epoch=0.75)
call("on_step_end", epoch=1.0)
call("on_log", logs={"loss": 0.1 + 0.2, "grad_norm": 0.0, "learning_rate": 2e-05, "epoch": 1.0, "memory_usage": 1234.5})
call("on_log", logs={**EVAL_2, "epoch": 1.0})
call("on_evaluate", metrics={**EVAL_2, "epoch": 1.0})
scrape()

values = [0.0, -0.0, 1.0, 2.5, 0.0002, 1e-05, -3.5e-05, 1.5e-7, 123456.0, 1234567.0, 12345678.9, 1e16, 1.5e300,
          -1234567.0, 0.1 + 0.2, 1 / 3, 2.0 ** 53, 5e-324, math.inf, -math.inf, math.nan]
floats = [[repr(v), floatToGoString(v)] for v in values]

OUT.parent.mkdir(parents=True, exist_ok=True)
OUT.write_text(json.dumps({
    "source": "scripts/reference/otel_goldens.py: Axolotl 067b021c OpenTelemetryMetricsCallback, opentelemetry-sdk "
              "1.45.2, opentelemetry-exporter-prometheus 0.66b2, prometheus_client 0.26.0",
    "content_type": content_type,
    "calls": calls,
    "scrapes": scrapes,
    "floats": floats,
}, indent=1) + "\n")
print(f"wrote {OUT}: {len(calls)} calls, {len(scrapes)} scrapes")
