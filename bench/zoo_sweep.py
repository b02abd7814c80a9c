"""Coverage sweep over model libraries beyond timm and torchvision that edge users build on:
segmentation_models_pytorch (U-Net, FPN, DeepLabV3+, Segformer, ... over many encoders),
efficientnet_pytorch, ultralytics (YOLOv5/8/9/10/11 detection, segmentation, pose and
classification models from their YAML files), pytorchcv (the first model of each of its
image families: 144 classifiers, segmenters, pose and face nets, CIFAR nets), MONAI (16
medical nets, 2-d and 3-d), kornia (local-feature, edge and super-resolution nets),
open_clip (CLIP image towers), torchreid (re-identification nets) and facenet_pytorch. None
of them is a dependency of pyprune:

    pip install segmentation-models-pytorch efficientnet-pytorch ultralytics opencv-python-headless pytorchcv \
        einops kornia open_clip_torch gdown tensorboard
    pip install --no-deps monai torchreid facenet-pytorch      # their pins would replace torch
    OMP_NUM_THREADS=1 python3 bench/zoo_sweep.py   # every model below of the libraries installed (about 20 min)

Every model is built with random weights, its BatchNorms given random statistics, pruned by
the L2 filter norm at ratio 0.5 (one thread, seed 0) on a 160 x 160 image (pytorchcv: the
model's own input size; one over 512 x 512 pixels, Cityscapes' segmenters, at most 256 x 512;
MONAI, kornia, open_clip, torchreid and facenet_pytorch: the sizes their builders below
give), and run. A row
per model, as in ``timm_sweep.py``: ok / refused / error / broken, the share of the
parameters removed, pyprune's warnings and ``cut_error`` (tests/planted.py). A library that
is not installed gives rows "skipped". Writes results/bench/zoo_sweep.jsonl, or ``--out``.
"""
from __future__ import annotations

import pathlib
import sys
import warnings

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE.parent / "results" / "bench" / "zoo_sweep.jsonl"
SMP = ["Unet:resnet34", "UnetPlusPlus:resnet34", "FPN:efficientnet-b0", "PSPNet:mobilenet_v2", "DeepLabV3:resnet18",
       "DeepLabV3Plus:resnet34", "Linknet:resnet18", "MAnet:resnet18", "PAN:resnet34", "UPerNet:resnet34",
       "Segformer:mit_b0", "Unet:mit_b0", "Unet:resnext50_32x4d", "Unet:densenet121", "Unet:inceptionv4",
       "Unet:inceptionresnetv2", "Unet:xception", "Unet:se_resnet50", "Unet:senet154", "Unet:dpn68", "Unet:vgg16_bn",
       "Unet:mobileone_s0", "Unet:timm-regnetx_002", "Unet:timm-res2net50_26w_4s", "Unet:timm-gernet_s",
       "Unet:timm-efficientnet-b0", "Unet:tu-mobilenetv3_large_100", "Unet:tu-convnext_atto", "FPN:mobilenet_v2"]
EFFICIENTNET = ["efficientnet-b0", "efficientnet-b3"]
ULTRALYTICS = ["yolov5n.yaml", "yolov8n.yaml", "yolov8n-seg.yaml", "yolov8n-pose.yaml", "yolov8n-cls.yaml",
               "yolov9t.yaml", "yolov10n.yaml", "yolo11n.yaml"]
# pytorchcv: the first model of each family (its own file) of images; its audio (Jasper, QuartzNet),
# face-animation (VOCA, ...), video (ProPainter) and two-image (RAFT) nets left out
PYTORCHCV = ['alexnet', 'zfnet', 'vgg11', 'bninception', 'resnet10', 'preresnet10', 'resnext14_16x4d', 'seresnet10',
             'sepreresnet10', 'seresnext50_32x4d', 'senet16', 'resnestabc14', 'ibn_resnet50', 'ibnb_resnet50',
             'ibn_resnext50_32x4d', 'ibn_densenet121', 'airnet50_1x64d_r2', 'airnext50_32x4d_r2', 'bam_resnet18',
             'cbam_resnet18', 'resattnet56', 'sknet50', 'scnet50', 'regnetx002', 'diaresnet10', 'diapreresnet10',
             'pyramidnet101_a360', 'diracnet18v2', 'sharesnet18', 'densenet121', 'condensenet74_c4_g4',
             'sparsenet121', 'peleenet', 'wrn50_2', 'drnc26', 'dpn68', 'darknet_ref', 'darknet53', 'channelnet',
             'revnet38', 'irevnet301', 'bagnet9', 'dla34', 'msdnet22', 'fishnet99', 'espnetv2_wd2', 'dicenet_wd5',
             'hrnet_w18_small_v1', 'vovnet27s', 'selecsls42', 'hardnet39ds', 'xdensenet121_2', 'squeezenet_v1_0',
             'sqnxt23_w1', 'shufflenet_g1_w1', 'shufflenetv2_wd2', 'shufflenetv2b_wd2', 'menet108_8x1_g3',
             'mobilenet_w1', 'mobilenetb_w1', 'fdmobilenet_w1', 'mobilenetv2_w1', 'mobilenetv3_small_w7d20',
             'igcv3_w1', 'ghostnet', 'mnasnet_b1', 'darts', 'proxylessnas_cpu', 'fbnet_cb', 'xception',
             'inceptionv3', 'inceptionv4', 'inceptionresnetv1', 'inceptionresnetv2', 'polynet', 'nasnet_4a1056',
             'pnasnet5large', 'spnasnet', 'efficientnet_b0', 'efficientnet_edge_small_b', 'mixnet_s', 'nin_cifar10',
             'resnet20_cifar10', 'preresnet20_cifar10', 'resnext20_16x4d_cifar10', 'seresnet20_cifar10',
             'sepreresnet20_cifar10', 'pyramidnet110_a48_cifar10', 'densenet40_k12_cifar10',
             'xdensenet40_2_k24_bc_cifar10', 'wrn16_10_cifar10', 'wrn20_10_1bit_cifar10', 'ror3_56_cifar10',
             'rir_cifar10', 'msdnet22_cifar10', 'resdropresnet20_cifar10', 'shakeshakeresnet20_2x16d_cifar10',
             'shakedropresnet20_cifar10', 'fractalnet_cifar10', 'diaresnet20_cifar10', 'diapreresnet20_cifar10',
             'isqrtcovresnet18', 'resneta10', 'resnetd50b', 'fastseresnet101b', 'octresnet10_ad2', 'resnet10_cub',
             'seresnet10_cub', 'mobilenet_w1_cub', 'proxylessnas_cpu_cub', 'ntsnet_cub', 'fcn8sd_resnetd50b_voc',
             'pspnet_resnetd50b_voc', 'deeplabv3_resnetd50b_voc', 'icnet_resnetd50b_cityscapes',
             'fastscnn_cityscapes', 'cgnet_cityscapes', 'dabnet_cityscapes', 'sinet_cityscapes',
             'bisenet_resnet18_celebamaskhq', 'danet_resnetd50b_cityscapes', 'fpenet_cityscapes',
             'ctxnet_cityscapes', 'lednet_cityscapes', 'esnet_cityscapes', 'edanet_cityscapes', 'enet_cityscapes',
             'erfnet_cityscapes', 'linknet_cityscapes', 'segnet_cityscapes', 'unet_cityscapes', 'sqnet_cityscapes',
             'alphapose_fastseresnet101b_coco', 'simplepose_resnet18_coco', 'simplepose_mobile_resnet18_coco',
             'lwopenpose2d_mobilenet_cmupan_coco', 'ibppose_coco', 'prnet', 'centernet_resnet18_voc',
             'lffd20x5s320v2_widerface', 'pfpcnet', 'superpointnet', 'tresnet_m', 'espcnet_cityscapes']
# MONAI (medical imaging): 2-d and 3-d nets (the name's suffix: spatial dims)
MONAI = ["UNet-2d", "UNet-3d", "BasicUNet-3d", "SegResNet-3d", "DynUNet-3d", "AttentionUnet-2d", "VNet-3d",
         "DenseNet121-2d", "EfficientNetBN-2d", "SEResNet50-2d", "resnet18-3d", "HighResNet-3d", "FlexibleUNet-2d",
         "UNETR-3d", "SwinUNETR-3d", "MedNeXt-3d"]
# kornia: its local-feature nets (patch descriptors on 32 x 32 patches, detectors and dense
# features on images), edge detection and super-resolution; those that need downloaded
# weights or two images (LoFTR, LightGlue, DeDoDe) left out
KORNIA = ["HardNet", "HardNet8", "HyNet", "SOSNet", "TFeat", "OriNet", "KeyNet", "DISK", "XFeatModel", "ALIKED",
          "SOLD2_detector", "DexiNed", "RRDBNet", "SmallSRNet"]
# open_clip: the image tower of CLIP models whose tower is open_clip's own (ModifiedResNet with its
# attention pool) or timm's (MobileCLIP's)
OPEN_CLIP = ["RN50", "RN101", "MobileCLIP-S1"]
# torchreid: person re-identification nets at 256 x 128, in eval mode (they return the embedding); HACNN
# left out: its forward moves tensors to a GPU
TORCHREID = ["osnet_x0_25", "osnet_ain_x0_25", "osnet_ibn_x1_0", "mlfn", "pcb_p6", "mudeep",
             "resnet50mid", "resnet50_fc512", "mobilenetv2_x1_0", "shufflenet", "squeezenet1_0_fc512",
             "nasnsetmobile", "resnet50_ibn_b"]
# facenet_pytorch: FaceNet's Inception-ResNet v1 and MTCNN's three stages
FACENET = ["InceptionResnetV1", "PNet", "RNet", "ONet"]
LIBRARIES = {"segmentation_models_pytorch": SMP, "efficientnet_pytorch": EFFICIENTNET, "ultralytics": ULTRALYTICS,
             "pytorchcv": PYTORCHCV, "monai": MONAI, "kornia": KORNIA, "open_clip": OPEN_CLIP,
             "torchreid": TORCHREID, "facenet_pytorch": FACENET}


def build(library: str, name: str):
    import torch

    if library == "segmentation_models_pytorch":
        import segmentation_models_pytorch as smp

        arch, encoder = name.split(":")
        model = getattr(smp, arch)(encoder_name=encoder, encoder_weights=None, classes=3)
    elif library == "efficientnet_pytorch":
        from efficientnet_pytorch import EfficientNet

        model = EfficientNet.from_name(name, num_classes=10)
    elif library == "pytorchcv":
        return _pytorchcv(name)
    elif library == "monai":
        return _monai(name)
    elif library == "kornia":
        return _kornia(name)
    elif library == "open_clip":
        import open_clip

        return open_clip.create_model(name, pretrained=None).visual.eval(), torch.randn(1, 3, 224, 224)
    elif library == "torchreid":
        import torchreid

        model = torchreid.models.build_model(name, num_classes=10, pretrained=False)
        return model.eval(), torch.randn(2, 3, 256, 128)
    elif library == "facenet_pytorch":
        import facenet_pytorch as fp

        if name == "InceptionResnetV1":
            return fp.InceptionResnetV1(classify=True, num_classes=10).eval(), torch.randn(1, 3, 160, 160)
        side = {"PNet": 64, "RNet": 24, "ONet": 48}[name]
        return getattr(fp, name)(pretrained=False).eval(), torch.randn(1, 3, side, side)
    else:
        from ultralytics.nn import tasks

        kind = {"seg": tasks.SegmentationModel, "pose": tasks.PoseModel, "cls": tasks.ClassificationModel}
        cls = next((c for k, c in kind.items() if name.endswith(f"-{k}.yaml")), tasks.DetectionModel)
        model = cls(name, nc=10, verbose=False)
    return model.eval(), torch.randn(1, 3, 160, 160)


def _pytorchcv(name: str):
    """A pytorchcv model at its own input size; one made for images over 512 x 512 pixels
    (Cityscapes' 1024 x 2048) is built for at most 256 x 512 where its builder takes
    ``in_size``."""
    import torch
    from pytorchcv.model_provider import get_model

    model = get_model(name, pretrained=False)
    size = tuple(getattr(model, "in_size", (224, 224)))
    small = (min(size[0], 256), min(size[1], 512)) if size[0] * size[1] > 512 * 512 else size
    if small != size:
        try:
            model, size = get_model(name, pretrained=False, in_size=small), small
        except TypeError:  # a builder without in_size: its own size
            pass
    first = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    grey = first is not None and first.in_channels == 1  # a grey-level net (SuperPoint, PFPCNet)
    return model.eval(), torch.randn(1, getattr(model, "in_channels", 1 if grey else 3), *size)


def _monai(name: str):
    """A MONAI net, small: one input channel (three for the classifiers), 64^2 images or 32^3
    volumes (64^3 for SwinUNETR)."""
    import torch
    from monai.networks import nets

    arch, dims = name.rsplit("-", 1)
    d = int(dims[0])
    seg = dict(spatial_dims=d, in_channels=1, out_channels=2)
    kwargs = {
        "UNet": dict(seg, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2),
        "BasicUNet": seg, "SegResNet": dict(seg, init_filters=8), "VNet": seg, "HighResNet": seg,
        "DynUNet": dict(seg, kernel_size=[3, 3, 3, 3], strides=[1, 2, 2, 2], upsample_kernel_size=[2, 2, 2]),
        "AttentionUnet": dict(seg, channels=(16, 32, 64, 128), strides=(2, 2, 2)),
        "DenseNet121": dict(spatial_dims=d, in_channels=3, out_channels=10),
        "EfficientNetBN": dict(model_name="efficientnet-b0", spatial_dims=d, in_channels=3, num_classes=10,
                               pretrained=False),
        "SEResNet50": dict(spatial_dims=d, in_channels=3, num_classes=10),
        "resnet18": dict(spatial_dims=d, n_input_channels=1, num_classes=2),
        "FlexibleUNet": dict(in_channels=3, out_channels=2, backbone="efficientnet-b0", pretrained=False,
                             spatial_dims=d),
        "UNETR": dict(in_channels=1, out_channels=2, img_size=(32,) * 3, feature_size=16, hidden_size=192,
                      mlp_dim=384, num_heads=4),
        "SwinUNETR": dict(in_channels=1, out_channels=2, feature_size=24, spatial_dims=d),
        "MedNeXt": dict(seg, init_filters=8),
    }[arch]
    model = getattr(nets, arch)(**kwargs)
    channels = kwargs.get("in_channels", kwargs.get("n_input_channels"))
    side = 64 if d == 2 or arch == "SwinUNETR" else 32  # (SwinUNETR's bottleneck needs more than one voxel)
    return model.eval(), torch.randn(1, channels, *[side] * d)


def _kornia(name: str):
    """A kornia net with random weights: patch nets on a batch of 32 x 32 grey patches, the
    rest on a 64 x 64 image (grey where the net reads one channel)."""
    import torch

    if name in ("DexiNed", "RRDBNet", "SmallSRNet"):
        from kornia.models import dexined, rrdbnet, small_sr

        model = {"DexiNed": lambda: dexined.DexiNed(pretrained=False),
                 "RRDBNet": lambda: rrdbnet.RRDBNet(3, 3, scale=2, num_feat=32, num_block=2, num_grow_ch=16),
                 "SmallSRNet": lambda: small_sr.SmallSRNet(upscale_factor=3, pretrained=False)}[name]()
    else:
        import kornia.feature as kf

        cls = getattr(kf, name)
        model = cls() if name in ("DISK", "XFeatModel", "ALIKED") else cls(pretrained=False)
    if name in ("HardNet", "HardNet8", "HyNet", "SOSNet", "TFeat", "OriNet"):
        return model.eval(), torch.randn(4, 1, 32, 32)
    grey = name in ("KeyNet", "XFeatModel", "SOLD2_detector", "SmallSRNet")
    return model.eval(), torch.randn(1, 1 if grey else 3, 64, 64)


def _shapes(out) -> list:
    import dataclasses

    import torch

    if isinstance(out, torch.Tensor):
        return [tuple(out.shape)]
    if dataclasses.is_dataclass(out) and not isinstance(out, type):  # kornia's DISKFeatures
        return [s for f in dataclasses.fields(out) for s in _shapes(getattr(out, f.name))]
    if isinstance(out, dict):
        return [s for v in out.values() for s in _shapes(v)]
    if isinstance(out, (list, tuple)):
        return [s for v in out for s in _shapes(v)]
    return []


def worker(library: str, name: str) -> dict:
    from bench_tables import use_checkout

    use_checkout()
    sys.path[:0] = [str(HERE.parent / "tests")]
    import torch

    from planted import cut_error, randomize_bn
    from sweep_rows import prune_row

    torch.manual_seed(0)
    torch.set_num_threads(1)
    row: dict = {"model": name, "library": library}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, x = build(library, name)
        randomize_bn(model)
        with torch.no_grad():
            want = _shapes(model(x))
    except Exception as e:  # noqa: BLE001 - a model that does not run unpruned says nothing of pyprune
        row.update(status="no-forward", error=f"{type(e).__name__}: {str(e)[:200]}")
        return row
    return prune_row(row, model, (x,), want, _shapes, cut_error)


def main() -> None:
    import importlib.util

    from sweep_rows import parse_sweep_args, print_counts, run_workers

    parsed = parse_sweep_args(__doc__, worker, ("LIBRARY", "MODEL"), "libraries", LIBRARIES, OUT, 300)
    if parsed is None:
        return
    a, libraries = parsed
    jobs = []
    for library in libraries:
        missing = importlib.util.find_spec(library) is None
        for name in LIBRARIES[library]:
            key = {"model": name, "library": library}
            jobs.append(({**key, "status": f"skipped: {library} is not installed"} if missing else key,
                         [library, name]))
    run_workers(__file__, jobs, a.out, a.timeout)
    print_counts(a.out, "library")


if __name__ == "__main__":
    main()
