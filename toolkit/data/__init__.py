"""Data: CIFAR-10 and the ImageNet-aligned set as uint8 tensors, splits, batch-wise augmentation."""

from toolkit.data.augment import random_crop_flip, to_float
from toolkit.data.batches import epoch_generator, index_batches
from toolkit.data.cifar10 import CIFAR10_CLASSES, Cifar10, ImageSet, load_cifar10
from toolkit.data.imagenet_aligned import load_imagenet_aligned
from toolkit.data.splits import stratified_sample, subset_size, train_val_split
from toolkit.data.synthetic import make_synthetic

__all__ = ["CIFAR10_CLASSES", "Cifar10", "ImageSet", "epoch_generator", "index_batches", "load_cifar10",
           "load_imagenet_aligned", "make_synthetic", "random_crop_flip", "stratified_sample", "subset_size",
           "to_float", "train_val_split"]
