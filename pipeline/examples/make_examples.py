"""Regenerate the bundled example: ``python pipeline/examples/make_examples.py``.

Writes ``dialogues.parquet`` (20 dialogue scripts) and ``prompt.flac`` (a 3-second synthetic
voice-clone prompt: a gliding harmonic tone in syllable-like bursts; not speech).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

HERE = Path(__file__).resolve().parent
SAMPLE_RATE = 44100

# (id, text, topic, extra overrides)
SCRIPTS: list[tuple[str, str, str, dict]] = [
    ("intro", "[S1] Dia is an open weights text to dialogue model. [S2] You get full control over scripts "
              "and voices. [S1] Wow. Amazing. (laughs) [S2] Try it now.", "product", {}),
    ("coffee", "[S1] Did you finish the last of the coffee? [S2] Me? Never. (clears throat) "
               "Okay, maybe one cup.", "home", {"seed": 1234}),
    ("weather", "[S1] It's raining again. [S2] (sighs) Third day in a row. [S1] At least the garden is happy.",
     "smalltalk", {}),
    ("interview", "[S1] Tell me about a time you solved a hard problem. [S2] Sure. Our build took forty "
                  "minutes, so I split it into stages and cached each one. [S1] And the result? "
                  "[S2] Four minutes.", "work", {"cfg_scale": 3.5}),
    ("surprise", "[S1] Surprise! [S2] (gasps) You remembered my birthday! [S1] Of course I did. (laughs)",
     "party", {}),
    ("cold", "[S1] (coughs) Sorry, I've had this cold all week. [S2] Stay home and rest, we'll manage.",
     "health", {"temperature": 1.1}),
    ("directions", "[S1] Excuse me, how do I get to the station? [S2] Go straight, then left at the bakery. "
                   "[S1] Thank you so much!", "travel", {}),
    ("podcast", "[S1] Welcome back to the show. Today we talk about sleep. [S2] Which I did not get much of "
                "last night. (chuckle) [S1] Perfect guest, then.", "media", {"max_seconds": 12.0}),
    ("game", "[S1] Your move. [S2] Hmm. Knight to f3. [S1] (groans) I did not see that coming.", "games", {}),
    ("recipe", "[S1] First, melt the butter. [S2] How much butter? [S1] All of it. [S2] (laughs) "
               "That explains a lot.", "food", {"seed": 7}),
    ("support", "[S1] Thanks for calling support, how can I help? [S2] My printer only prints blank pages. "
                "[S1] Have you tried turning it off and on again?", "work", {}),
    ("monologue", "[S1] Some mornings the city is so quiet that you can hear the river from the bridge, "
                  "and for a moment it feels like the whole place is holding its breath.", "story", {}),
    ("short", "[S1] Hi. [S2] Hello!", "smalltalk", {"max_seconds": 4.0}),
    ("news", "[S1] In local news, the library extends its opening hours. [S2] Good news for night owls "
             "and students alike.", "media", {"cfg_scale": 2.5, "top_p": 0.9}),
    ("argue", "[S1] It's pronounced data. [S2] No, it's data. [S1] (sighs) We are never agreeing on this.",
     "smalltalk", {}),
    ("concert", "[S1] Listen to that crowd! (applause) [S2] They want an encore. [S1] Then let's give them one.",
     "music", {}),
    ("lesson", "[S1] Repeat after me: the quick brown fox. [S2] The quick brown fox. [S1] Jumps over the lazy "
               "dog. [S2] Jumps over the lazy dog. (laughs)", "education", {"top_k": 40}),
    ("space", "[S1] Houston, we have liftoff. [S2] Copy that, all systems nominal. [S1] (exhales) "
              "Here we go.", "story", {}),
    ("goodbye", "[S1] I guess this is goodbye. [S2] Only for now. Write to me? [S1] Every week.",
     "story", {"seed": 99}),
    ("clone", "[S1] This line is spoken in the voice of the prompt clip. [S2] And I answer in my own voice.",
     "voice-clone", {"audio_prompt": "prompt.flac",
                     "prompt_transcript": "[S1] This is a short reference clip for the voice."}),
]


def prompt_wave(seconds: float = 3.0) -> np.ndarray:
    """A voice-like test signal: a gliding harmonic tone in syllable-sized bursts."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 140 + 25 * np.sin(2 * np.pi * 0.7 * t) + 6 * np.sin(2 * np.pi * 5.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    tone = sum(np.sin(k * phase) / k for k in range(1, 9))
    syllables = np.clip(np.sin(2 * np.pi * 3.2 * t), 0, None) ** 0.6
    fade = np.minimum(1.0, np.minimum(t, seconds - t) / 0.05)
    wave = 0.25 * tone * syllables * fade
    return wave.astype(np.float32)


def main() -> None:
    override_cols = ("seed", "cfg_scale", "temperature", "top_p", "top_k", "max_seconds",
                     "audio_prompt", "prompt_transcript")
    columns: dict[str, list] = {"id": [], "text": [], "topic": []}
    columns.update({c: [] for c in override_cols})
    for row_id, text, topic, extra in SCRIPTS:
        columns["id"].append(row_id)
        columns["text"].append(text)
        columns["topic"].append(topic)
        for c in override_cols:
            columns[c].append(extra.get(c))
    types = {"seed": pa.int64(), "top_k": pa.int64(), "cfg_scale": pa.float64(), "temperature": pa.float64(),
             "top_p": pa.float64(), "max_seconds": pa.float64()}
    table = pa.table({name: pa.array(values, types.get(name, pa.string())) for name, values in columns.items()})
    pq.write_table(table, HERE / "dialogues.parquet")
    sf.write(HERE / "prompt.flac", prompt_wave(), SAMPLE_RATE, format="FLAC", subtype="PCM_16")


if __name__ == "__main__":
    main()
