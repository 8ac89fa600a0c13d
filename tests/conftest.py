import pytest
import torch

# One intra-op thread: the suite's models are tiny, so more threads only fight (with each other
# and with the verifier pools) and results stay repeatable at a fixed count.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny():
    """A randomly initialised, very small Llama model and the char tokenizer (seconds to build)."""
    import torch

    from ponder.models.model import TinyModelConfig, new_tiny

    torch.manual_seed(0)
    model, tok = new_tiny(TinyModelConfig(hidden_size=32, layers=2, heads=2, mlp_ratio=2), seed=0)
    model.eval()
    return model, tok
