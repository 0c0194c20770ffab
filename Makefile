PYTHON ?= python3

.PHONY: demo demo-quick test

# Full CPU demo ablation (~15 min on 2 cores); OUTPUT_DIR=... to choose where it writes.
demo:
	bash scripts/demo.sh --output_dir $${OUTPUT_DIR:-demo_output}

demo-quick:
	bash scripts/demo.sh --quick --output_dir $${OUTPUT_DIR:-demo_output_quick}

# Lint + the whole test suite (pass ARGS="-m \"not slow\"" to skip the end-to-end runs).
test:
	bash scripts/test.sh $(ARGS)
