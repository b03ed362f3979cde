"""Reads a TensorBoard log folder with TensorBoard's own reader (event_accumulator) and prints
JSON: {"scalars": {tag: [[step, value], ...]}, "text": {tag: [text, ...]}, "text_plugin": {tag: plugin}}.

Run with the pinned tensorboard on PYTHONPATH (scripts/tracking-tools.sh tensorboard):
    PYTHONPATH=$(scripts/tracking-tools.sh tensorboard) python3 -S tests/tracking/read_tensorboard.py LOGDIR
"""

import json
import sys

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

acc = event_accumulator.EventAccumulator(
    sys.argv[1], size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0}
)
acc.Reload()
tags = acc.Tags()
out = {"scalars": {}, "text": {}, "text_plugin": {}}
for tag in tags["scalars"]:
    out["scalars"][tag] = [[e.step, e.value] for e in acc.Scalars(tag)]
for tag in tags["tensors"]:
    out["text"][tag] = [tensor_util.make_ndarray(e.tensor_proto).item().decode() for e in acc.Tensors(tag)]
    out["text_plugin"][tag] = acc.SummaryMetadata(tag).plugin_data.plugin_name
print(json.dumps(out))
