"""Data: CIFAR-10, the ImageNet-aligned set and image folders as uint8 tensors, splits, batch-wise augmentation."""

from toolkit.data.augment import (AugmentSpec, augment_batch, random_crop_flip, random_resized_crop_flip, resolve_augment,
                                  to_float)
from toolkit.data.batches import epoch_generator, index_batches
from toolkit.data.cifar10 import CIFAR10_CLASSES, Cifar10, ImageSet, load_cifar10
from toolkit.data.folder import FolderListing, FolderSplits, load_folder_splits, scan_image_folder
from toolkit.data.imagenet_aligned import load_imagenet_aligned
from toolkit.data.splits import holdout_size, stratified_sample, subset_size, train_val_split
from toolkit.data.synthetic import make_synthetic

__all__ = ["AugmentSpec", "CIFAR10_CLASSES", "Cifar10", "FolderListing", "FolderSplits", "ImageSet", "augment_batch",
           "epoch_generator", "holdout_size", "index_batches", "load_cifar10", "load_folder_splits",
           "load_imagenet_aligned", "make_synthetic", "random_crop_flip", "random_resized_crop_flip", "resolve_augment",
           "scan_image_folder", "stratified_sample", "subset_size", "to_float", "train_val_split"]
