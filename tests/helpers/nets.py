"""Networks with seeded random (or hand-set) weights, saved where a user's checkpoint would be, so the
real loading code runs on them."""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.parity.clap import write_tokenizer


def tiny_clap_config():
    import transformers

    return transformers.ClapConfig(
        text_config=dict(
            vocab_size=300,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=1,
            intermediate_size=37,
            max_position_embeddings=80,
            layer_norm_eps=1e-5,
        ),
        audio_config=dict(
            patch_embeds_hidden_size=8, depths=[1, 1, 2, 1], num_attention_heads=[1, 1, 2, 2], hidden_size=64
        ),
        projection_dim=16,
    )


def save_tiny_clap(directory: Path) -> Path:
    """A randomly initialised tiny CLAP saved as a transformers directory with a byte-level tokenizer."""
    import transformers

    write_tokenizer(directory)
    torch.manual_seed(0)
    transformers.ClapModel(tiny_clap_config()).save_pretrained(directory)
    return directory


def save_tiny_aesthetic(directory: Path) -> tuple[Path, Path]:
    """A randomly initialised tiny CLIP vision tower (`directory/clip`, 32 px, projection 24) and LAION
    aesthetic head (`directory/head.pth`)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from klear_lightning.metrics.nets.aesthetic import AestheticHead

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=16,
        projection_dim=24,
    )
    CLIPVisionModelWithProjection(cfg).save_pretrained(directory / "clip")
    torch.save(AestheticHead(24).state_dict(), directory / "head.pth")
    return directory / "clip", directory / "head.pth"


CAPTION_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "ball"]


def save_red_ball_captioner(directory: Path) -> Path:
    """A tiny BLIP (random weights) with a BERT word-piece vocabulary, saved as an image-text-to-text
    directory; its output bias makes it say "red" for any image (then "ball" would be as likely: it
    repeats "red" up to the token limit)."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(CAPTION_WORDS) + "\n")
    processor = BlipProcessor(
        BlipImageProcessorPil(size={"height": 32, "width": 32}), BertTokenizer(str(directory / "vocab.txt"))
    )
    layers = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2)
    text = dict(layers, vocab_size=len(CAPTION_WORDS), max_position_embeddings=64, bos_token_id=2, sep_token_id=3)
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(
        BlipConfig(text_config=text, vision_config=dict(layers, image_size=32, patch_size=16), projection_dim=16)
    )
    with torch.no_grad():
        model.text_decoder.cls.predictions.bias.fill_(-1e4)[CAPTION_WORDS.index("red")] = 1e4
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def save_sound_audio_captioner(directory: Path) -> Path:
    """A tiny Qwen2-Audio (random weights) with a byte-level BPE vocabulary whose first token is "sound",
    saved as an any-to-any directory; its final norm is zeroed, so every logit is 0 and greedy decoding
    says "sound" at every step."""
    import json

    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        Qwen2Tokenizer,
        WhisperFeatureExtractor,
    )

    directory.mkdir(parents=True, exist_ok=True)
    merges = ["s o", "so u", "sou n", "soun d"]
    vocab = {t: i for i, t in enumerate(["sound", "so", "sou", "soun", *sorted(ByteLevel.alphabet())])}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = Qwen2Tokenizer(
        str(directory / "vocab.json"),
        str(directory / "merges.txt"),
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]}
    )
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
        "{% if c['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>{% else %}{{ c['text'] }}{% endif %}"
        "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    features = WhisperFeatureExtractor(feature_size=16, sampling_rate=16000)
    processor = Qwen2AudioProcessor(feature_extractor=features, tokenizer=tokenizer, chat_template=template)
    audio = dict(num_mel_bins=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32, d_model=16)
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    torch.manual_seed(0)
    model = Qwen2AudioForConditionalGeneration(
        Qwen2AudioConfig(
            audio_config=audio, text_config=text, audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>")
        )
    )
    with torch.no_grad():
        model.model.language_model.norm.weight.zero_()
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def save_speaker_classifier(directory: Path, labels: tuple[str, ...]) -> Path:
    """A tiny wav2vec2 audio classifier (16 kHz) whose head always picks `labels[0]`."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

    config = Wav2Vec2Config(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=24,
        conv_dim=(8, 8),
        conv_stride=(5, 4),
        conv_kernel=(10, 8),
        num_feat_extract_layers=2,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        classifier_proj_size=8,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    torch.manual_seed(0)
    model = Wav2Vec2ForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.fill_(0.0)[0] = 5.0
    model.save_pretrained(directory)
    Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(directory)
    return directory


def save_one_face_s3fd(path: Path) -> Path:
    """S3FD weights that see one face, the same box in every frame: every head silent but the fifth
    (one prior on a 64 px input), which is sure of a face at zero box offset."""
    from klear_lightning.metrics.nets.s3fd import S3FD

    net = S3FD()
    with torch.no_grad():
        for i, conv in enumerate(net.conf):
            conv.weight.zero_()
            conv.bias.zero_()
            if i == 4:
                conv.bias[-1] = 10.0
        for conv in net.loc:
            conv.weight.zero_()
            conv.bias.zero_()
    torch.save(net.state_dict(), path)
    return path


def save_random_syncnet(path: Path) -> Path:
    from klear_lightning.metrics.nets.syncnet import SyncNet

    torch.manual_seed(0)
    torch.save(SyncNet().state_dict(), path)
    return path


def save_singing_tagger(weights: Path, labels: Path) -> tuple[Path, Path]:
    """PANNs Cnn14 weights whose head hears "Singing" (class 1 of the labels file written beside it,
    in AudioSet's `class_labels_indices.csv` layout) in anything, and "Speech" (class 0) in nothing."""
    from klear_lightning.metrics.nets.cnn14 import N_CLASSES, Cnn14

    torch.manual_seed(0)
    net = Cnn14()
    with torch.no_grad():
        net.fc_audioset.weight.zero_()
        net.fc_audioset.bias.fill_(-10.0)
        net.fc_audioset.bias[1] = 10.0
    torch.save({"model": net.state_dict()}, weights)
    names = ["Speech", "Singing"] + [f"Class {i}" for i in range(2, N_CLASSES)]
    rows = [f'{i},/m/{i:05d},"{name}"' for i, name in enumerate(names)]
    labels.write_text("index,mid,display_name\n" + "\n".join(rows) + "\n")
    return weights, labels
