"""How text is read, shared by data preparation, training and evaluation: chat templates, token ids, final answers."""
