"""Task contracts shared by synthesis, training and evaluation: how a multiple-choice item is built and scored."""
