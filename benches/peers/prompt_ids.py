#!/usr/bin/env python3
"""Print the benchmark prompt as comma-separated token ids: common.TEXT repeated to N tokens by the
model's Hugging Face tokenizer. run.sh passes these ids to every engine, so all of them see the same ids."""
import os
import sys

import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

model, n = sys.argv[1], int(sys.argv[2])
print(",".join(map(str, common.hf_prompt_ids(transformers.AutoTokenizer.from_pretrained(model), n))))
