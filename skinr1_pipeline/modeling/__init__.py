"""Model-side contracts: the prompt/completion format (and, later, the model + processor factory)."""
