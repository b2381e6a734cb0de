//! Quantization algorithms, one per file: rtn, gptq, awq, activation; linalg helpers.
