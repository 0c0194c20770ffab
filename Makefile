PYTHON ?= python3

.PHONY: demo demo-quick demo-smollm2 test

# Full CPU demo ablation (~30 min on 2 cores); OUTPUT_DIR=... to choose where it writes.
demo:
	bash scripts/demo.sh --output_dir $${OUTPUT_DIR:-demo_output}

demo-quick:
	bash scripts/demo.sh --quick --output_dir $${OUTPUT_DIR:-demo_output_quick}

# The same ablation on the pretrained SmolLM2-135M-Instruct (~45 min on 2 cores)
demo-smollm2:
	bash scripts/demo.sh --llm smollm2 --output_dir $${OUTPUT_DIR:-demo_output_smollm2}

# Lint + the whole test suite (pass ARGS="-m \"not slow\"" to skip the end-to-end runs).
test:
	bash scripts/test.sh $(ARGS)
