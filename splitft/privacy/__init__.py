"""What an honest-but-curious server can learn, and what a client does about it.

    defenses.py   what a client does to what it sends (activation noise; grad_hidden keep/clip/noise)
    inversion.py  attacks on the activations at a cut: tokens back from hidden states
    labels.py     attacks on grad_hidden under a U-shaped split: labels back from gradients
    floor.py      the measured table (`splitft privacy`) read back as the smallest cut a privacy floor allows
Mechanism only; `splitft privacy` (sim/privacy.py) runs the attacks on a configured model and data.
"""
