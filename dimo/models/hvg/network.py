"""HVG network: diffusers' SVD UNet extended for V views x T frames (no copy of its file).

:class:`HVGUNet` subclasses :class:`~diffusers.UNetSpatioTemporalConditionModel` so every SVD key
keeps its name (strict loading of SVD-xt weights), and adds:

* ``pose_modulator``: dual bone-map guiders, added to ``conv_in``'s output by a forward hook;
* ``...transformer_blocks.N.view_attn``: view attention after every spatial transformer block
  (forward hook), i.e. between spatial and temporal attention;
* ``camera_embedding``: added to ``time_embedding``'s output by a forward hook;
* ``reference_net``: a :class:`ReferenceNet` (conv_in, embeddings, down and mid blocks of the same
  UNet, initialised from it) whose spatial self-attention inputs join the down/mid blocks' spatial
  self-attention through :class:`~dimo.models.hvg.layers.ReferenceAttnProcessor`.

Layout: the UNet's batch axis is B*V (views are independent videos to diffusers), its frame axis T;
the temporal layers therefore see frames (and SVD's frame-index embedding ``time_pos_embed`` is
reused unchanged: index within the temporal window), view attention sees views.

:func:`load_svd_unet_weights` loads an SVD state dict with strict key checks except for the explicit
:data:`HVG_NEW_LAYER_PATTERNS`; :func:`load_pretrained_components` reads a local SVD-xt diffusers
folder (``unet/``, ``vae/``, ``image_encoder/``).

Exports (:class:`~dimo.pipelines.hvg.HVGPipeline`) hold the three parts in that same layout, each
written by its ``save_pretrained`` and read back by its strict ``from_pretrained`` (which
``diffusers.DiffusionPipeline.from_pretrained`` also calls): ``unet/config.json`` is the SVD UNet
config plus the HVG switches under ``hvg``; ``vae/`` and ``image_encoder/`` are plain SVD-xt parts
(``AutoencoderKLTemporalDecoder``, ``CLIPVisionModelWithProjection``) whose preset is read off their
config.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn
import torch.utils.checkpoint
from diffusers import AutoencoderKLTemporalDecoder, ModelMixin, UNetSpatioTemporalConditionModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.resnet import Downsample2D, SpatioTemporalResBlock, Upsample2D
from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, PreTrainedModel

from dimo.models.common import check_loading_options, freeze, load_strict
from dimo.models.hvg.config import CLIP_PRESETS, VAE_PRESETS, HVGConfig, PresetName
from dimo.models.hvg.layers import (
    CameraEmbedding,
    ForwardState,
    PoseModulator,
    ReferenceAttnProcessor,
    ViewAttention,
    check_plain_attention,
)

#: Keys of an HVGUNet state dict that SVD does not have (everything else must match SVD exactly).
HVG_NEW_LAYER_PATTERNS: tuple[str, ...] = (
    r"^pose_modulator\.",
    r"^camera_embedding\.",
    r"\.transformer_blocks\.\d+\.view_attn\.",
    r"^reference_net\.",
)

#: Layers recomputed in backward when gradient checkpointing is on (their inputs are all they keep).
CHECKPOINTED_LAYERS = (
    SpatioTemporalResBlock,
    TransformerSpatioTemporalModel,
    Downsample2D,
    Upsample2D,
    PoseModulator,
)
_CHECKPOINT_PREFIX = "_checkpoint_wrapped_module."

_REFERENCE_PREFIXES = ("conv_in.", "time_embedding.", "add_embedding.", "down_blocks.", "mid_block.")

# diffusers resolves a part's loader by looking these base classes up in the module that model_index.json
# names for the part (this one): keep them importable from here
_LOADER_BASES = (ModelMixin, PreTrainedModel)

#: config keys that fix each part's shape (checked against the preset when a folder is loaded)
_UNET_KEYS = (
    "block_out_channels",
    "cross_attention_dim",
    "in_channels",
    "layers_per_block",
    "num_attention_heads",
)
_VAE_KEYS = (
    "in_channels", "out_channels", "down_block_types", "block_out_channels", "layers_per_block", "latent_channels",
)  # fmt: skip
_CLIP_KEYS = (
    "hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers", "num_attention_heads",
    "num_channels", "image_size", "patch_size", "hidden_act", "layer_norm_eps",
)  # fmt: skip


def strip_checkpoint_prefix(name: str) -> str:
    """A parameter name without the checkpoint wrappers' ``_checkpoint_wrapped_module.`` parts
    (state-dict keys never have them)."""

    return name.replace(_CHECKPOINT_PREFIX, "")


def is_hvg_key(key: str) -> bool:
    return any(re.search(p, key) for p in HVG_NEW_LAYER_PATTERNS)


def _spatial_blocks(unet: nn.Module, parts: tuple[str, ...]) -> dict[str, BasicTransformerBlock]:
    """Spatial transformer blocks (not the temporal ones) under the given top-level parts."""

    out = {}
    for name, mod in unet.named_modules():
        if name.split(".")[0] in parts and isinstance(mod, BasicTransformerBlock):
            if re.search(r"\.transformer_blocks\.\d+$", name):
                out[name] = mod
    return out


class _ReferenceDone(Exception):
    """Raised after the last capture: nothing after the mid block's first self-attention is needed."""


class ReferenceNet(nn.Module):
    """Spatial encoder of the reference (AnimateAnyone): the UNet's conv_in, embeddings, down and mid
    blocks, run once per sample at timestep 0 with one frame. ``forward`` returns the input of every
    down/mid spatial self-attention: name -> (B, h_l*w_l, C_l).

    The forward stops at the input of the mid block's spatial self-attention (the last feature used);
    the parameters after it (the rest of the mid block) are kept so SVD weights load strictly, but are
    frozen, so no trainable parameter is ever unused (plain DDP works).
    """

    def __init__(self, unet_kwargs: dict):
        super().__init__()
        base = UNetSpatioTemporalConditionModel(**unet_kwargs)
        for name in ("conv_in", "time_proj", "time_embedding", "add_time_proj", "add_embedding"):
            setattr(self, name, getattr(base, name))
        self.down_blocks = base.down_blocks
        self.mid_block = base.mid_block
        self._captured: dict[str, torch.Tensor] = {}
        self._capturing = False
        blocks = _spatial_blocks(self, ("down_blocks", "mid_block"))
        self._last = list(blocks)[-1]
        for name, block in blocks.items():
            block.attn1.register_forward_pre_hook(self._capture(name))
        mid_attn = self.mid_block.attentions
        if len(mid_attn) != 1 or len(mid_attn[0].transformer_blocks) != 1:
            raise ValueError("ReferenceNet expects SVD's mid block layout (one attention, one layer)")
        used = (
            "resnets.0.",
            "attentions.0.norm.",
            "attentions.0.proj_in.",
            "attentions.0.transformer_blocks.0.norm1.",
        )
        for name, p in self.mid_block.named_parameters():
            if not name.startswith(used):
                p.requires_grad_(False)

    def _capture(self, name: str):
        def hook(_module, args):
            if not self._capturing:
                return  # a checkpointed layer recomputed in backward
            self._captured[name] = args[0]
            if name == self._last:
                raise _ReferenceDone

        return hook

    def forward(
        self, sample: torch.Tensor, encoder_hidden_states: torch.Tensor, added_time_ids: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        # sample (B, 8, h, w); encoder_hidden_states (B, 1, D); added_time_ids (B, 3)
        b = sample.shape[0]
        t_emb = self.time_proj(torch.zeros(b, device=sample.device)).to(sample.dtype)
        emb = self.time_embedding(t_emb)
        aug = self.add_time_proj(added_time_ids.flatten()).reshape(b, -1).to(emb.dtype)
        emb = emb + self.add_embedding(aug)
        x = self.conv_in(sample)
        indicator = torch.zeros(b, 1, dtype=x.dtype, device=x.device)  # one frame
        self._captured, self._capturing = {}, True
        try:
            for block in self.down_blocks:
                has_cross = getattr(block, "has_cross_attention", False)
                kwargs = {"encoder_hidden_states": encoder_hidden_states} if has_cross else {}
                x, _ = block(hidden_states=x, temb=emb, image_only_indicator=indicator, **kwargs)
            self.mid_block(
                hidden_states=x,
                temb=emb,
                encoder_hidden_states=encoder_hidden_states,
                image_only_indicator=indicator,
            )
        except _ReferenceDone:
            pass
        finally:
            captured, self._captured, self._capturing = self._captured, {}, False
        if self._last not in captured:
            raise RuntimeError("ReferenceNet did not reach its last spatial self-attention")
        return captured


class HVGUNet(UNetSpatioTemporalConditionModel):
    """SVD UNet + HVG additions. See the module docstring; shapes in :meth:`forward`."""

    def __init__(self, hvg: HVGConfig | None = None):
        hvg = hvg or HVGConfig()
        super().__init__(**hvg.unet_kwargs())
        self.hvg = hvg
        self._state = ForwardState()
        c0 = self.config.block_out_channels[0]
        temb_dim = c0 * 4

        self.pose_modulator = PoseModulator(
            hvg.pose_channels, c0, hvg.guider_channels, hvg.fusion_heads, hvg.latent_downsample
        )
        self.conv_in.register_forward_hook(self._add_pose)

        self.camera_embedding = (
            CameraEmbedding(temb_dim, hvg.camera_frequencies) if hvg.camera_embedding else None
        )
        self.time_embedding.register_forward_hook(self._add_camera)

        if hvg.view_attention:
            for block in _spatial_blocks(self, ("down_blocks", "mid_block", "up_blocks")).values():
                block.add_module("view_attn", ViewAttention(block.attn1.query_dim, block.attn1.heads))
                block.register_forward_hook(self._view_attention)

        self.reference_net = ReferenceNet(hvg.unet_kwargs()) if hvg.reference_net else None
        if self.reference_net is not None:
            for name, block in _spatial_blocks(self, ("down_blocks", "mid_block")).items():
                check_plain_attention(block.attn1)
                block.attn1.set_processor(ReferenceAttnProcessor(self._state, name))
        self._checkpoint_func = None

    def load_folder(self, folder: str | Path) -> None:
        """SVD UNet weights of ``<folder>/unet`` (an SVD-xt diffusers folder): every SVD key strictly,
        HVG's new layers keep their init; the ReferenceNet starts from the same weights."""

        check_unet_config(folder, self.hvg)
        load_svd_unet_weights(self, read_unet_state_dict(folder))

    # ---- exports: the whole network (SVD keys and HVG's layers) in one diffusers part folder ----
    def save_pretrained(self, save_directory: str | Path, **kwargs) -> None:
        """diffusers' ``save_pretrained`` (``config.json`` + ``diffusion_pytorch_model.safetensors``),
        with the HVG switches (:class:`HVGConfig`) under ``hvg`` in ``config.json``."""

        kwargs.setdefault("safe_serialization", True)
        super().save_pretrained(save_directory, **kwargs)
        _update_config(Path(save_directory) / "config.json", hvg=asdict(self.hvg))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **loading) -> HVGUNet:
        """Rebuild from a folder :meth:`save_pretrained` wrote and load every weight strictly (no key may
        be missing or unexpected), in eval mode. ``loading``: the options ``DiffusionPipeline.from_pretrained``
        passes (``torch_dtype`` applied; placement options refused in one line)."""

        dtype = check_loading_options(cls.__name__, loading)
        folder = Path(pretrained_model_name_or_path)
        config_file = _require(folder / "config.json", "HVG UNet config")
        hvg = json.loads(config_file.read_text()).get("hvg")
        if not isinstance(hvg, dict):
            raise ValueError(
                f"{config_file} has no 'hvg' entry: not an HVG network (an SVD-xt UNet folder is loaded "
                "through HVGModule(pretrained=...))"
            )
        try:
            net = cls(HVGConfig(**hvg))
        except (TypeError, KeyError) as err:
            raise ValueError(f"{config_file}: bad 'hvg' entry {hvg}: {err}") from None
        _check_part_config(folder, dict(net.config), _UNET_KEYS, net.hvg.preset)
        load_strict(net, read_part_weights(folder, "diffusion_pytorch_model", "HVG UNet weights"), folder)
        return _loaded(net, dtype).eval()

    # ---- gradient checkpointing -----------------------------------------------------------------
    def enable_gradient_checkpointing(self, gradient_checkpointing_func=None) -> None:
        """Recompute, in backward, every layer of :data:`CHECKPOINTED_LAYERS` (spatio-temporal res
        blocks, whole spatio-temporal transformers: spatial + view + temporal attention and their
        mixers, down/up samplers, the pose modulator), in the UNet and in the ReferenceNet's down
        blocks; only their inputs are kept. The per-call state (views, frames, reference features, ...)
        is restored while a layer is recomputed, so gradients are those without checkpointing.

        Layers are wrapped with torch's ``checkpoint_wrapper`` (what FSDP's activation checkpointing
        uses): state-dict keys are unchanged, parameter names gain ``_checkpoint_wrapped_module.``
        (:func:`strip_checkpoint_prefix`). ``gradient_checkpointing_func(module, *args, **kwargs)``
        replaces ``torch.utils.checkpoint.checkpoint`` (the memory model measures with it).
        diffusers' own, finer checkpointing (resnets and spatial blocks only) is not used.
        """

        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        self._checkpoint_func = gradient_checkpointing_func
        if self.is_gradient_checkpointing:
            return

        def wrap(parent: nn.Module) -> None:
            for name, child in list(parent.named_children()):
                if isinstance(child, CHECKPOINTED_LAYERS):
                    parent.register_module(name, checkpoint_wrapper(child, checkpoint_fn=self._checkpoint))
                elif child is not self.reference_net:  # its mid block ends the forward early
                    wrap(child)

        wrap(self)
        if self.reference_net is not None:
            wrap(self.reference_net.down_blocks)

    def disable_gradient_checkpointing(self) -> None:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

        for parent in list(self.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, CheckpointWrapper):
                    parent.register_module(name, child._checkpoint_wrapped_module)

    @property
    def is_gradient_checkpointing(self) -> bool:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

        return any(isinstance(m, CheckpointWrapper) for m in self.modules())

    def _checkpoint(self, module: nn.Module, *args, **kwargs):
        if not torch.is_grad_enabled():
            return module(*args, **kwargs)
        snap = self._state.snapshot()

        def run(*inputs, **kw):
            with self._state.restored(snap):
                return module(*inputs, **kw)

        if self._checkpoint_func is not None:
            return self._checkpoint_func(run, *args, **kwargs)
        return torch.utils.checkpoint.checkpoint(run, *args, use_reentrant=False, **kwargs)

    # ---- hooks: read the per-call state -------------------------------------------------------
    def _add_pose(self, _module, _args, out):
        res = self._state.pose_residual
        if res is None:
            return out
        if res.shape != out.shape:
            raise ValueError(
                f"pose residual {tuple(res.shape)} does not match conv_in output {tuple(out.shape)}"
            )
        return out + res.to(out.dtype)

    def _add_camera(self, _module, _args, out):
        cam = self._state.camera_emb
        return out if cam is None else out + cam.to(out.dtype)

    def _view_attention(self, module, _args, out):
        return module.view_attn(out, self._state.num_views, self._state.num_frames)

    # ---- forward --------------------------------------------------------------------------------
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        added_time_ids: torch.Tensor | None = None,
        *,
        cond_latent: torch.Tensor | None = None,
        reference_latent: torch.Tensor | None = None,
        pose_maps: dict[str, torch.Tensor] | None = None,
        rel_rot: torch.Tensor | None = None,
        reference_keep: torch.Tensor | None = None,
        return_dict: bool = False,
    ) -> torch.Tensor:
        """Predict the network output F for a V x T grid.

        Args:
            sample: c_in-scaled noisy latents (B, V, T, 4, h, w).
            timestep: c_noise (B,) or scalar.
            encoder_hidden_states: CLIP image embedding of the reference (B, 1, D).
            added_time_ids: SVD's (fps, motion bucket, noise augmentation) (B, 3).
            cond_latent: SVD's conditioning latent of the reference (B, 4, h, w), joined to every
                view/frame's noisy latent (zeros when None or switched off).
            reference_latent: clean reference latent (B, 4, h, w) for the ReferenceNet.
            pose_maps: name -> (B, V, T, C, H, W) bone maps (H = 8h), per :attr:`HVGConfig.pose_channels`.
            rel_rot: rotations relative to the reference view (B, V, 3, 3).
            reference_keep: (B,) bool; False drops every reference pathway for that sample (CFG).
        Returns:
            (B, V, T, 4, h, w)
        """

        b, v, t, c, h, w = sample.shape
        dtype, device = sample.dtype, sample.device
        timestep = torch.as_tensor(timestep, device=device, dtype=torch.float32).reshape(-1).expand(b)
        keep = None if reference_keep is None else reference_keep.to(device=device, dtype=torch.bool)
        keep_f = torch.ones(b, device=device, dtype=dtype) if keep is None else keep.to(dtype)

        if cond_latent is None or not self.hvg.reference_latent:
            cond = sample.new_zeros(b, c, h, w)
        else:
            cond = cond_latent.to(dtype) * keep_f[:, None, None, None]
        x = torch.cat([sample, cond[:, None, None].expand(b, v, t, c, h, w)], dim=3)  # (B, V, T, 8, h, w)

        cross_dim = self.config.cross_attention_dim
        cross_dim = cross_dim if isinstance(cross_dim, int) else cross_dim[0]
        if encoder_hidden_states is None or not self.hvg.reference_clip:
            ctx = sample.new_zeros(b, 1, cross_dim)
        else:
            ctx = encoder_hidden_states.to(dtype) * keep_f[:, None, None]
        if added_time_ids is None:
            raise ValueError("added_time_ids (B, 3) are required (SVD's fps, motion bucket, noise aug)")

        state = self._state
        state.clear()
        state.num_views, state.num_frames = v, t
        try:
            if self.camera_embedding is not None and rel_rot is not None:
                state.camera_emb = self.camera_embedding(rel_rot.reshape(b * v, 3, 3))  # (B*V, temb)
            if pose_maps is not None:
                flat = {k: m.reshape(b * v * t, *m.shape[3:]).to(dtype) for k, m in pose_maps.items()}
                state.pose_residual = self.pose_modulator(flat)  # (B*V*T, C0, h, w)
            # While training, the ReferenceNet runs even when every sample of the call dropped its
            # reference (CFG): the dropped samples mask its tokens out (exactly plain self-attention,
            # zero gradient), but its parameters stay in the graph, so DDP never sees them unused.
            run_ref = self.reference_net is not None and reference_latent is not None
            if run_ref and (torch.is_grad_enabled() or bool(keep_f.any())):
                ref_in = torch.cat([reference_latent.to(dtype), cond], dim=1)  # (B, 8, h, w)
                state.reference_features = self.reference_net(ref_in, ctx, added_time_ids.to(dtype))
                state.reference_keep = keep
            out = super().forward(
                x.reshape(b * v, t, 2 * c, h, w),
                timestep.repeat_interleave(v),
                ctx.repeat_interleave(v, dim=0),
                added_time_ids.to(dtype).repeat_interleave(v, dim=0),
                return_dict=False,
            )[0]
        finally:
            state.clear()
        return out.reshape(b, v, t, *out.shape[2:])


# ---------------------------------------------------------------------------------------------------
# weights
def load_svd_unet_weights(net: HVGUNet, state_dict: dict[str, torch.Tensor]) -> None:
    """Load an SVD UNet state dict into ``net``: every SVD key must match, the only keys allowed to be
    missing are HVG's new layers (:data:`HVG_NEW_LAYER_PATTERNS`); the ReferenceNet is initialised
    from the same weights (strictly)."""

    missing, unexpected = net.load_state_dict(state_dict, strict=False)
    bad_missing = [k for k in missing if not is_hvg_key(k)]
    if bad_missing or unexpected:
        raise RuntimeError(
            "SVD UNet weights do not match the HVG network: "
            f"missing (not HVG layers) {bad_missing[:10]}{'...' if len(bad_missing) > 10 else ''}, "
            f"unexpected {list(unexpected)[:10]}{'...' if len(unexpected) > 10 else ''}"
        )
    if net.reference_net is not None:
        ref_sd = {k: v for k, v in state_dict.items() if k.startswith(_REFERENCE_PREFIXES)}
        net.reference_net.load_state_dict(ref_sd, strict=True)


def _norm(x):
    return list(x) if isinstance(x, (list, tuple)) else x


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"{what} not found: {path} (dimo never downloads weights; point to a local folder)"
        )
    return path


def weights_variant(folder: Path, stem: str, what: str) -> str | None:
    """The variant to load from ``folder``: ``None`` for full-precision weights (``<stem>.safetensors``
    or its sharded index), ``"fp16"`` when only ``<stem>.fp16.safetensors`` (or its sharded index) is
    there; otherwise a one-line :class:`FileNotFoundError` naming the file that is missing."""

    folder = _require(folder, what)
    full = (f"{stem}.safetensors", f"{stem}.safetensors.index.json")
    half = (f"{stem}.fp16.safetensors", f"{stem}.safetensors.index.fp16.json")
    if any((folder / n).exists() for n in full):
        return None
    if any((folder / n).exists() for n in half):
        return "fp16"
    raise FileNotFoundError(
        f"{what}: no {full[0]} (or {half[0]}, or a sharded index) in {folder} "
        "(dimo never downloads weights; point to a complete local folder)"
    )


def read_unet_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """State dict of ``folder/unet`` (single or sharded safetensors; full precision preferred, else the
    fp16 variant), as float32."""

    from safetensors.torch import load_file

    stem = "diffusion_pytorch_model"
    unet_dir = _require(Path(folder) / "unet", "SVD UNet folder")
    variant = weights_variant(unet_dir, stem, "SVD UNet weights")
    single = unet_dir / (f"{stem}.safetensors" if variant is None else f"{stem}.{variant}.safetensors")
    index = unet_dir / (
        f"{stem}.safetensors.index.json" if variant is None else f"{stem}.safetensors.index.{variant}.json"
    )
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [_require(unet_dir / s, "SVD UNet shard") for s in shards]
    else:
        files = [single]
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update({k: v.float() for k, v in load_file(str(f)).items()})
    return state


def check_unet_config(folder: str | Path, hvg: HVGConfig) -> None:
    cfg = json.loads(_require(Path(folder) / "unet" / "config.json", "SVD UNet config").read_text())
    want = hvg.unet_kwargs()

    diff = {k: (cfg[k], want[k]) for k in _UNET_KEYS if k in cfg and _norm(cfg[k]) != _norm(want[k])}
    if diff:
        raise ValueError(f"{folder}/unet/config.json does not match preset {hvg.preset!r}: {diff}")


def read_part_weights(folder: Path, stem: str, what: str) -> dict[str, torch.Tensor]:
    """Float32 state dict of a diffusers/transformers part folder (single or sharded safetensors; full
    precision preferred, else the fp16 variant); a missing file is a one-line FileNotFoundError."""

    from safetensors.torch import load_file

    variant = weights_variant(folder, stem, what)
    single = folder / (f"{stem}.safetensors" if variant is None else f"{stem}.{variant}.safetensors")
    index = folder / (
        f"{stem}.safetensors.index.json" if variant is None else f"{stem}.safetensors.index.{variant}.json"
    )
    files = [single]
    if index.exists():
        files = [
            _require(folder / s, what)
            for s in sorted(set(json.loads(index.read_text())["weight_map"].values()))
        ]
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update({k: v.float() for k, v in load_file(str(f)).items()})
    return state


def _check_part_config(folder: Path, have: dict, keys: tuple[str, ...], preset: str) -> dict:
    """The folder's ``config.json``; a forward-relevant key that differs from the preset's part is a
    one-line ValueError (the part is built from the preset, the folder supplies its weights)."""

    cfg = json.loads(_require(folder / "config.json", f"{folder.name} config").read_text())

    diff = {k: (cfg[k], have[k]) for k in keys if k in cfg and _norm(cfg[k]) != _norm(have[k])}
    if diff:
        raise ValueError(f"{folder}/config.json does not match preset {preset!r} (folder, preset): {diff}")
    return cfg


class SVDVAE(AutoencoderKLTemporalDecoder):
    """The frozen SVD VAE of an HVG preset (random weights; ``HVGModule(pretrained=...)`` loads a
    folder's). Same state-dict keys as diffusers' ``AutoencoderKLTemporalDecoder``."""

    def __init__(self, preset: PresetName = "tiny") -> None:
        super().__init__(**VAE_PRESETS[preset])
        self.preset = preset

    def load_folder(self, folder: str | Path) -> None:
        """Strictly load ``<folder>/vae`` (an SVD-xt diffusers folder) after checking its shape; its
        latent ``scaling_factor`` (and ``force_upcast``) replace the preset's defaults."""

        self._load_part(_require(Path(folder) / "vae", "SVD VAE folder"))

    def _load_part(self, path: Path) -> None:
        cfg = _check_part_config(path, dict(self.config), _VAE_KEYS, self.preset)
        load_strict(self, read_part_weights(path, "diffusion_pytorch_model", "SVD VAE weights"), path)
        self.register_to_config(
            **{k: cfg[k] for k in ("scaling_factor", "force_upcast", "sample_size") if k in cfg}
        )

    def save_pretrained(self, save_directory: str | Path, **kwargs) -> None:
        """A plain SVD ``vae/`` folder (``_class_name`` ``AutoencoderKLTemporalDecoder``)."""

        kwargs.setdefault("safe_serialization", True)
        super().save_pretrained(save_directory, **kwargs)
        _update_config(
            Path(save_directory) / "config.json", _class_name=AutoencoderKLTemporalDecoder.__name__
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **loading) -> SVDVAE:
        """The frozen VAE of an SVD ``vae/`` folder: the preset its config matches, every weight strictly."""

        dtype = check_loading_options(cls.__name__, loading)
        path = Path(pretrained_model_name_or_path)
        vae = cls(_preset_of(path, VAE_PRESETS, _VAE_KEYS))
        vae._load_part(path)
        return freeze(_loaded(vae, dtype))


class SVDImageEncoder(CLIPVisionModelWithProjection):
    """The frozen CLIP image encoder of an HVG preset (random weights; ``HVGModule(pretrained=...)``
    loads a folder's). Same state-dict keys as transformers' ``CLIPVisionModelWithProjection``."""

    def __init__(self, preset: PresetName = "tiny") -> None:
        super().__init__(CLIPVisionConfig(**CLIP_PRESETS[preset]))
        self.preset = preset

    def load_folder(self, folder: str | Path) -> None:
        """Strictly load ``<folder>/image_encoder`` (an SVD-xt diffusers folder) after checking its shape."""

        self._load_part(_require(Path(folder) / "image_encoder", "CLIP image encoder folder"))

    def _load_part(self, path: Path) -> None:
        _check_part_config(path, self.config.to_dict(), _CLIP_KEYS, self.preset)
        state = read_part_weights(path, "model", "CLIP image encoder weights")
        load_strict(self, state, path, allow_missing=("vision_model.embeddings.position_ids",))

    def save_pretrained(self, save_directory: str | Path, **kwargs) -> None:
        """A plain SVD ``image_encoder/`` folder (``architectures`` ``CLIPVisionModelWithProjection``)."""

        super().save_pretrained(save_directory, **kwargs)
        _update_config(
            Path(save_directory) / "config.json", architectures=[CLIPVisionModelWithProjection.__name__]
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *_args, **loading) -> SVDImageEncoder:
        """The frozen encoder of an SVD ``image_encoder/`` folder: the preset its config matches, every
        weight strictly."""

        dtype = check_loading_options(cls.__name__, loading)
        path = Path(pretrained_model_name_or_path)
        enc = cls(_preset_of(path, CLIP_PRESETS, _CLIP_KEYS))
        enc._load_part(path)
        return freeze(_loaded(enc, dtype))


def _update_config(config_file: Path, **entries) -> None:
    """Set ``entries`` in a part's ``config.json`` (after the library wrote it)."""

    config_file.write_text(
        json.dumps({**json.loads(config_file.read_text()), **entries}, indent=2, sort_keys=True)
    )


def _preset_of(folder: Path, presets: dict[str, dict], keys: tuple[str, ...]) -> str:
    """The preset whose shape ``folder/config.json`` has (compared on ``keys``), or one ValueError line."""

    cfg = json.loads(_require(folder / "config.json", f"{folder.name} config").read_text())

    for name, preset in presets.items():
        if all(_norm(cfg.get(k)) == _norm(v) for k, v in preset.items() if k in keys):
            return name
    raise ValueError(f"{folder / 'config.json'} matches no HVG preset ({', '.join(presets)}) on {list(keys)}")


def _loaded(module: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    if dtype is not None and dtype != torch.float32:
        nn.Module.to(module, dtype=dtype)
    return module


def build_vae(hvg: HVGConfig, pretrained: str | Path | None = None) -> SVDVAE:
    """The preset's VAE, random or loaded from a local SVD-xt folder (``<pretrained>/vae``)."""

    vae = SVDVAE(hvg.preset)
    if pretrained is not None:
        vae.load_folder(pretrained)
    return vae


def build_image_encoder(hvg: HVGConfig, pretrained: str | Path | None = None) -> SVDImageEncoder:
    """The preset's CLIP image encoder, random or from ``<pretrained>/image_encoder``."""

    enc = SVDImageEncoder(hvg.preset)
    if pretrained is not None:
        enc.load_folder(pretrained)
    return enc


def build_unet(hvg: HVGConfig, pretrained: str | Path | None = None) -> HVGUNet:
    """HVG UNet, random (``pretrained=None``) or from a local SVD-xt diffusers folder."""

    net = HVGUNet(hvg)
    if pretrained is not None:
        net.load_folder(pretrained)
    return net


def count_parameters(module: nn.Module, exclude_hvg: bool = False) -> int:
    return sum(p.numel() for k, p in module.named_parameters() if not (exclude_hvg and is_hvg_key(k)))
