"""qkv.speech features and WAV reading: the mel filterbank against its formula written as loops,
resampling against the analytic signal and scipy, WAV files of every kind handled or refused."""

import io
import math
import wave

import numpy as np
import pytest
import torch

from qkv.speech.features import hz_to_mel, log_mel, mel_filterbank, mel_to_hz, resample, speed_perturb
from qkv.speech.vtlp import warp_frequencies
from qkv.speech.wav import read_wav


def _filterbank_loops(n_freqs, n_mels, rate, f_min, f_max):
    """The HTK triangular filterbank, one bin and one filter at a time, in float64."""
    m_lo, m_hi = 2595 * math.log10(1 + f_min / 700), 2595 * math.log10(1 + f_max / 700)
    edges = [700 * (10 ** ((m_lo + (m_hi - m_lo) * i / (n_mels + 1)) / 2595) - 1) for i in range(n_mels + 2)]
    out = np.zeros((n_freqs, n_mels))
    for k in range(n_freqs):
        f = (rate / 2) * k / (n_freqs - 1)
        for m in range(n_mels):
            lo, c, hi = edges[m], edges[m + 1], edges[m + 2]
            if lo <= f <= c:
                out[k, m] = (f - lo) / (c - lo)
            elif c < f <= hi:
                out[k, m] = (hi - f) / (hi - c)
    return out


@pytest.mark.parametrize(
    ("n_freqs", "n_mels", "rate", "f_min"), [(201, 40, 16000, 20.0), (257, 23, 8000, 0.0)]
)
def test_mel_filterbank_equals_the_formula(n_freqs, n_mels, rate, f_min):
    fb = mel_filterbank(n_freqs, n_mels, rate, f_min)
    assert fb.shape == (n_freqs, n_mels)
    np.testing.assert_allclose(
        fb.double().numpy(), _filterbank_loops(n_freqs, n_mels, rate, f_min, rate / 2), atol=1e-6
    )


@pytest.mark.parametrize("alpha", [0.9, 0.95, 1.05, 1.1])
def test_vtlp_warp_is_alpha_below_the_boundary_and_keeps_both_ends(alpha):
    f = torch.linspace(0, 8000, 8001, dtype=torch.float64)
    w = warp_frequencies(f, alpha, 8000.0)
    boundary = 4800 * min(alpha, 1) / alpha  # the paper's f_hi at 16 kHz
    low = f <= boundary
    torch.testing.assert_close(w[low], alpha * f[low], rtol=1e-12, atol=0)
    assert float(w[0]) == 0.0 and float(w[-1]) == pytest.approx(8000.0, abs=1e-9)
    assert bool((w.diff() > 0).all())  # increasing: the filters stay in order
    assert float(w[low].max()) <= 4800 + 1e-9
    # continuous at the boundary: the two pieces meet
    b = torch.tensor([boundary - 1e-6, boundary + 1e-6], dtype=torch.float64)
    assert float(warp_frequencies(b, alpha, 8000.0).diff()) < 1e-5
    assert warp_frequencies(f, 1.0, 8000.0) is f
    with pytest.raises(ValueError, match=r"alpha: expected a warp factor in \(0.5, 2\), got 3"):
        warp_frequencies(f, 3, 8000.0)
    with pytest.raises(ValueError, match=r"f_hi: expected a frequency in \(0, 8000.0\), got 9000"):
        warp_frequencies(f, 1.1, 8000.0, f_hi=9000)


@pytest.mark.parametrize("alpha", [0.9, 1.1])
def test_a_warped_filterbank_is_the_formula_on_warped_edges(alpha):
    n_freqs, n_mels, rate, f_min = 201, 40, 16000, 20.0
    fb = mel_filterbank(n_freqs, n_mels, rate, f_min, warp=alpha)
    torch.testing.assert_close(
        mel_filterbank(n_freqs, n_mels, rate, f_min, warp=1.0), mel_filterbank(n_freqs, n_mels, rate, f_min)
    )
    m_lo, m_hi = hz_to_mel(f_min), hz_to_mel(rate / 2)
    edges = mel_to_hz(torch.linspace(m_lo, m_hi, n_mels + 2, dtype=torch.float64))
    edges = warp_frequencies(edges, alpha, rate / 2)
    freqs = torch.linspace(0, rate / 2, n_freqs, dtype=torch.float64)
    want = np.zeros((n_freqs, n_mels))
    for m in range(n_mels):  # each filter a triangle on its warped edges, peak 1 at its centre
        lo, c, hi = (float(e) for e in edges[m : m + 3])
        want[:, m] = np.interp(freqs.numpy(), [lo, c, hi], [0.0, 1.0, 0.0], left=0.0, right=0.0)
    np.testing.assert_allclose(fb.double().numpy(), want, atol=1e-6)
    assert fb.shape == (n_freqs, n_mels) and float(fb.min()) == 0.0 and float(fb.max()) <= 1.0
    # the low filters' centres move by alpha: the filter that peaks at bin k now peaks near alpha * k
    base = mel_filterbank(n_freqs, n_mels, rate, f_min)
    k0, k1 = base[:, 30].argmax(), fb[:, 30].argmax()
    assert abs(int(k1) - alpha * int(k0)) <= 1


def test_mel_scale_round_trip_and_anchor():
    assert hz_to_mel(700.0) == pytest.approx(2595 * math.log10(2))
    f = torch.tensor([0.0, 100.0, 1000.0, 7999.0], dtype=torch.float64)
    torch.testing.assert_close(mel_to_hz(hz_to_mel(f)), f)


@pytest.mark.parametrize(("orig", "new"), [(22050, 16000), (8000, 16000), (44100, 16000), (16000, 16000)])
def test_resample_a_sine_equals_the_sine_at_the_new_rate(orig, new):
    x = torch.sin(2 * math.pi * 440 * torch.arange(orig) / orig).double()
    y = resample(x, orig, new)
    assert y.shape == (math.ceil(orig * new / orig),)
    want = torch.sin(2 * math.pi * 440 * torch.arange(y.shape[0]) / new).double()
    assert float((y - want)[100:-100].abs().max()) < 2e-3  # edges: the zero padding


def test_resample_matches_scipy_resample_poly():
    from scipy.signal import resample_poly

    g = torch.Generator().manual_seed(0)
    x = resample(torch.randn(4410, generator=g, dtype=torch.float64), 22050, 4000)  # band-limited noise
    x = resample(x, 4000, 22050)
    ref = torch.from_numpy(resample_poly(x.numpy(), 320, 441))
    y = resample(x, 22050, 16000)
    assert y.shape == ref.shape
    assert float((y - ref)[200:-200].abs().max()) < 5e-3 * float(x.abs().max())


def test_resample_refuses_bad_rates():
    with pytest.raises(ValueError, match="orig_rate: expected a positive int"):
        resample(torch.zeros(10), 0, 16000)
    with pytest.raises(ValueError, match="new_rate"):
        resample(torch.zeros(10), 16000, 16000.5)


def test_log_mel_of_a_tone_peaks_in_its_band():
    rate = 16000
    x = torch.sin(2 * math.pi * 1000 * torch.arange(rate) / rate)
    feats = log_mel(x, sample_rate=rate)
    assert feats.shape == (101, 40)  # centred frames: 1 + T // hop
    fb = mel_filterbank(201, 40, rate, 20.0)
    assert int(feats[50].argmax()) == int(fb[round(1000 / (rate / 2) * 200)].argmax())
    with pytest.raises(ValueError, match=r"waveform: expected a mono waveform \(T,\)"):
        log_mel(torch.zeros(2, 100))


def _wav_bytes(samples: np.ndarray, rate: int, width: int = 2, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return buf.getvalue()


def test_read_wav_16_bit_mono_8khz():
    s = np.array([0, 16384, -32768, 32767], dtype="<i2")
    x, rate = read_wav(_wav_bytes(s, 8000))
    assert rate == 8000
    torch.testing.assert_close(x, torch.tensor([0, 0.5, -1.0, 32767 / 32768]))


def test_read_wav_stereo_is_averaged_and_8_bit_is_unsigned(tmp_path):
    stereo = np.array([[16384, 0], [-16384, -16384]], dtype="<i2").reshape(-1)
    x, _ = read_wav(_wav_bytes(stereo, 16000, channels=2))
    torch.testing.assert_close(x, torch.tensor([0.25, -0.5]))
    path = tmp_path / "u8.wav"
    path.write_bytes(_wav_bytes(np.array([128, 192, 0], dtype=np.uint8), 16000, width=1))
    x, _ = read_wav(path)
    torch.testing.assert_close(x, torch.tensor([0.0, 0.5, -1.0]))


def test_read_wav_refuses_empty_not_audio_and_missing(tmp_path):
    with pytest.raises(ValueError, match="holds no samples"):
        read_wav(_wav_bytes(np.zeros(0, dtype="<i2"), 16000))
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio at all")
    with pytest.raises(ValueError, match=r"notes.wav' is not a PCM WAV file"):
        read_wav(bad)
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_wav(tmp_path / "absent.wav")


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturbation_scales_duration_and_frequency_by_the_factor(factor):
    rate = 16000
    x = torch.sin(2 * math.pi * 500 * torch.arange(rate) / rate).double()  # 1 s of 500 Hz
    y = speed_perturb(x, factor, rate)
    assert y.shape[0] == math.ceil(rate * round(rate / factor / 100) * 100 / rate)
    assert abs(y.shape[0] / rate - 1 / factor) < 0.005  # duration divided by the factor
    # played back at the same rate, the tone is factor times higher
    spectrum = torch.fft.rfft(y[1000:-1000] * torch.hann_window(y.shape[0] - 2000, dtype=torch.float64))
    peak_hz = float(spectrum.abs().argmax()) * rate / (y.shape[0] - 2000)
    assert peak_hz == pytest.approx(500 * factor, rel=0.005)
    assert speed_perturb(x, 1.0, rate) is x
    with pytest.raises(ValueError, match=r"factor: expected a speed factor in \(0.5, 2\), got 0"):
        speed_perturb(x, 0, rate)
