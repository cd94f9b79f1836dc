"""A randomly initialised model with the base's config and tokenizer: it costs what the base costs."""
import sys

import torch
from transformers import AutoConfig, AutoModelForCausalLM

folder = sys.argv[1]
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch.float32)
model.save_pretrained(folder)
print("twin of", model.config.model_type, sum(p.numel() for p in model.parameters()) // 10**6, "M parameters")
