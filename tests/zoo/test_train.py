from edgewise.zoo import TrainConfig, load_trained, train


def test_training_learns_digits_and_reloads(digits, tmp_path):
    # Execute
    tm = train("mlp", digits, TrainConfig(epochs=5))
    tm.save(tmp_path)
    again = load_trained(tmp_path)
    # Assert: far above the 10% of chance, and the checkpoint reproduces it
    assert tm.metrics["test_accuracy"] > 0.85
    assert again.params == tm.params and again.labels == [str(i) for i in range(10)]
    assert {p.name for p in tmp_path.iterdir()} == {"model.onnx", "checkpoint.pt", "train.json"}


def test_small_datasets_get_enough_steps():
    assert TrainConfig(epochs=5, batch_size=64, min_steps=300).epochs_for(48) == 300
    assert TrainConfig(epochs=5, batch_size=64, min_steps=0).epochs_for(48) == 5
