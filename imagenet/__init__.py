"""The ImageNet side of a found architecture: the DeiT/LocalViT training recipe (`recipe`), the
trainer that runs it (`train`), and the export that turns a search's best trials into such
training jobs (`export`)."""
