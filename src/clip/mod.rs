//! open_clip ViT image encoder: the global conditioning vector of the released model.
