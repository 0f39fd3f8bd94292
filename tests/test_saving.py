"""fastmlp.saving: .keras and .weights.h5 files in Keras 3's layout, read back by fastmlp and made by
real Keras 3 (tests/fixtures/keras, from tests/fixtures/make_keras_files.py); resuming training
from a file bit for bit; corrupt files; atomic writes. The other direction, fastmlp's files opened
by Keras, is checked by tests/fixtures/check_keras_interop.py where Keras is installed."""

import io
import json
import os
import stat
import zipfile

import h5py
import numpy as np
import pytest

import fastmlp
from fastmlp import callbacks, layers, losses, optimizers, regularizers, saving
from fastmlp.models import Sequential, load_model

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "keras")
KERAS_CASES = ["sgd_momentum", "adam_flatten", "rmsprop_sparse", "adagrad_schedule", "float64", "batchnorm"]


def xor_data(n, seed=0):
    x = np.random.RandomState(seed).randn(n, 2).astype(np.float32)
    return x, np.eye(2, dtype=np.float32)[(x[:, 0] * x[:, 1] <= 0).astype(np.int64)]


OPTIMIZERS = {
    "sgd_decay": lambda: optimizers.SGD(decay=0.001, momentum=0.99),
    "sgd_nesterov_clip": lambda: optimizers.SGD(0.05, momentum=0.9, nesterov=True, clipnorm=1.0),
    "sgd_plain": lambda: optimizers.SGD(0.1),
    "adam": lambda: optimizers.Adam(0.01),
    "adamw": lambda: optimizers.AdamW(0.01, weight_decay=0.01),
    "rmsprop_momentum": lambda: optimizers.RMSprop(0.01, momentum=0.5),
    "rmsprop": lambda: optimizers.RMSprop(0.01),
    "adagrad": lambda: optimizers.Adagrad(0.05),
    "schedule": lambda: optimizers.SGD(optimizers.schedules.PiecewiseConstantDecay([5], [0.1, 0.01]), momentum=0.5),
}


def seed_model(optimizer, metrics=("accuracy",)):
    model = Sequential([layers.Dense(4, activation="relu", input_dim=2), layers.Dense(4, activation="relu"),
                        layers.Dense(2, activation="softmax")])
    model.compile(loss="binary_crossentropy", optimizer=optimizer, metrics=list(metrics))
    return model


def assert_same_weights(actual, expected):
    assert len(actual) == len(expected)
    for a, b in zip(actual, expected):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def optimizer_state(model):
    return [np.array(v) for v in saving.optimizer_variables(model)]


# ---- fastmlp -> fastmlp ----


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_round_trip_keeps_weights_optimizer_state_and_compile_settings(tmp_path, name):
    x, y = xor_data(200)
    model = seed_model(OPTIMIZERS[name]())
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = load_model(path)
    assert loaded.name == model.name and [layer.name for layer in loaded.layers] == [l.name for l in model.layers]
    assert_same_weights(loaded.get_weights(), model.get_weights())
    assert_same_weights(optimizer_state(loaded), optimizer_state(model))
    assert type(loaded.optimizer) is type(model.optimizer)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert (loaded.loss, loaded._compile_args["metrics"]) == (model.loss, model._compile_args["metrics"])
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.get_config() == model.get_config()


@pytest.mark.parametrize("name", ["sgd_decay", "adam", "rmsprop_momentum", "adagrad", "schedule"])
@pytest.mark.parametrize("via", ["save", "checkpoint", "save_weights"])
def test_resuming_from_a_file_equals_uninterrupted_training(tmp_path, name, via):
    x, y = xor_data(300)
    xv, yv = xor_data(60, seed=1)
    fit = dict(batch_size=32, validation_data=(xv, yv), verbose=0)
    fastmlp.utils.set_random_seed(21)
    straight = seed_model(OPTIMIZERS[name]())
    history = straight.fit(x, y, epochs=6, **fit)

    fastmlp.utils.set_random_seed(21)
    first = seed_model(OPTIMIZERS[name]())
    if via == "checkpoint":  # saved by ModelCheckpoint at the end of epoch 3 of a 6-epoch run
        path = str(tmp_path / "ckpt-{epoch}.keras")
        first.fit(x, y, epochs=6, callbacks=[callbacks.ModelCheckpoint(path)], **fit)
        resumed = load_model(path.format(epoch=3))
    elif via == "save":
        first.fit(x, y, epochs=3, **fit)
        first.save(tmp_path / "m.keras")
        resumed = load_model(tmp_path / "m.keras")
    else:
        first.fit(x, y, epochs=3, **fit)
        first.save_weights(tmp_path / "m.weights.h5")
        fastmlp.utils.set_random_seed(99)  # a different start, replaced by the file
        resumed = seed_model(OPTIMIZERS[name]())
        resumed.load_weights(tmp_path / "m.weights.h5")
    rest = resumed.fit(x, y, epochs=6, initial_epoch=3, **fit)
    assert_same_weights(resumed.get_weights(), straight.get_weights())
    assert_same_weights(optimizer_state(resumed), optimizer_state(straight))
    assert rest.epoch == [3, 4, 5]
    assert rest.history == {k: v[3:] for k, v in history.history.items()}


def test_successive_fits_shuffle_like_one_long_fit():
    x, y = xor_data(200)
    fastmlp.utils.set_random_seed(4)
    once = seed_model(optimizers.Adam(0.01))
    once.fit(x, y, epochs=4, batch_size=16, verbose=0)
    fastmlp.utils.set_random_seed(4)
    twice = seed_model(optimizers.Adam(0.01))
    twice.fit(x, y, epochs=2, batch_size=16, verbose=0)
    twice.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert_same_weights(twice.get_weights(), once.get_weights())


def rich_model():
    model = Sequential([layers.Input(shape=(2, 3)), layers.Flatten(),
                        layers.Dense(5, kernel_initializer="he_normal", bias_initializer=fastmlp.initializers.Constant(0.1),
                                     kernel_regularizer=regularizers.L1L2(0.01, 0.02)),
                        layers.Activation("tanh"), layers.Dense(3, use_bias=False, bias_regularizer="l2"),
                        layers.Activation("softmax")], name="rich")
    model.compile(loss=losses.CategoricalCrossentropy(label_smoothing=0.1), metrics=["accuracy", "mse"],
                  optimizer=optimizers.Adam(optimizers.schedules.CosineDecay(0.01, 100, alpha=0.1)))
    return model


@pytest.mark.parametrize("floatx", ["float32", "float64"])
def test_round_trip_of_flatten_activation_regularizers_initializers_and_float64(tmp_path, floatx):
    fastmlp.backend.set_floatx(floatx)
    try:
        model = rich_model()
    finally:
        fastmlp.backend.set_floatx("float32")
    x = np.random.RandomState(0).randn(40, 2, 3)
    y = np.eye(3)[np.random.RandomState(1).randint(0, 3, 40)]
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    model.save(tmp_path / "rich.keras")
    loaded = load_model(tmp_path / "rich.keras")
    assert [type(layer).__name__ for layer in loaded.layers] == ["Flatten", "Dense", "Activation", "Dense",
                                                                 "Activation"]
    assert loaded.get_config() == model.get_config()
    assert loaded._compile_args["dtype"] == floatx and loaded.get_weights()[0].dtype == floatx
    assert_same_weights(loaded.get_weights(), model.get_weights())
    dense = loaded.layers[1]
    assert isinstance(dense.kernel_initializer, fastmlp.initializers.HeNormal)
    assert dense.bias_initializer.value == 0.1
    assert (dense.kernel_regularizer.l1, dense.kernel_regularizer.l2) == (0.01, 0.02)
    assert loaded._loss.label_smoothing == 0.1
    assert loaded.optimizer.learning_rate.get_config() == model.optimizer.learning_rate.get_config()
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.evaluate(x, y, verbose=0) == model.evaluate(x, y, verbose=0)


def test_uncompiled_and_unbuilt_models_and_compile_false(tmp_path):
    plain = Sequential([layers.Dense(3, activation="relu", input_dim=4), layers.Dense(1)])
    plain.save(tmp_path / "plain.keras")
    loaded = load_model(tmp_path / "plain.keras")
    assert not loaded.compiled and "compile_config" not in json.loads(
        zipfile.ZipFile(tmp_path / "plain.keras").read("config.json"))
    assert_same_weights(loaded.get_weights(), plain.get_weights())

    unbuilt = Sequential([layers.Dense(3), layers.Dense(1)])
    unbuilt.save(tmp_path / "unbuilt.keras")
    loaded = load_model(tmp_path / "unbuilt.keras")
    assert not loaded.built and [layer.units for layer in loaded.layers] == [3, 1]

    model = seed_model("adam")
    model.fit(*xor_data(50), verbose=0)
    model.save(tmp_path / "m.keras")
    assert not load_model(tmp_path / "m.keras", compile=False).compiled


def test_summary_counts_the_optimizer_state_once_trained(capsys):
    model = seed_model(optimizers.SGD(0.1, momentum=0.9))
    model.summary()
    assert "Optimizer params" not in capsys.readouterr().out
    model.fit(*xor_data(50), verbose=0)
    model.summary()
    out = capsys.readouterr().out
    # 42 weights; iterations, learning_rate and 42 momentums, 4 bytes each, as Keras counts them.
    assert " Total params: 86 (344.00 B)" in out and " Optimizer params: 44 (176.00 B)" in out


# ---- the files' layout is Keras 3's ----


def h5_tree(data):
    """{dataset path: (shape, dtype kind)} and {group path: attrs} of an HDF5 file's bytes."""
    datasets, groups = {}, {}
    with h5py.File(io.BytesIO(data), "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                datasets[name] = (obj.shape, obj.dtype.kind)
            else:
                groups[name] = dict(obj.attrs)
        f.visititems(visit)
    return datasets, groups


def test_written_files_have_keras_layout_matching_a_keras_file(tmp_path):
    """The fixture sgd_momentum.keras was written by Keras 3 for this same architecture and optimizer."""
    model = Sequential([layers.Input(shape=(2,)), layers.Dense(4, activation="relu"),
                        layers.Dense(4, activation="relu"), layers.Dense(2, activation="softmax")])
    model.compile(loss="categorical_crossentropy", optimizer=optimizers.SGD(0.05, momentum=0.9), metrics=["accuracy"])
    model.fit(*xor_data(64), epochs=2, batch_size=16, verbose=0)
    model.save(tmp_path / "m.keras")
    ours, theirs = zipfile.ZipFile(tmp_path / "m.keras"), zipfile.ZipFile(os.path.join(FIXTURES, "sgd_momentum.keras"))
    assert ours.namelist() == theirs.namelist() == ["metadata.json", "config.json", "model.weights.h5"]
    assert {i.compress_type for i in ours.infolist()} == {zipfile.ZIP_STORED}
    our_sets, our_groups = h5_tree(ours.read("model.weights.h5"))
    their_sets, their_groups = h5_tree(theirs.read("model.weights.h5"))
    assert our_sets == their_sets  # same paths, shapes, kinds: layers/dense/vars/0, optimizer/vars/0 ...
    assert set(our_groups) == set(their_groups)
    assert our_groups["layers/dense_1/vars"] == {"name": model.layers[1].name}
    assert our_groups["vars"] == {"name": model.name}
    ours_config, theirs_config = (json.loads(z.read("config.json")) for z in (ours, theirs))
    assert [layer["class_name"] for layer in ours_config["config"]["layers"]] == [
        layer["class_name"] for layer in theirs_config["config"]["layers"]]
    for key in ("module", "class_name", "build_config"):
        assert ours_config[key] == theirs_config[key]
    assert ours_config["compile_config"]["loss"]["class_name"] == "CategoricalCrossentropy"
    assert ours_config["compile_config"]["optimizer"]["config"]["momentum"] == 0.9
    metadata = json.loads(ours.read("metadata.json"))
    assert metadata["keras_version"] == saving.KERAS_VERSION and metadata["fastmlp"]["version"] == fastmlp.__version__


@pytest.mark.parametrize("name, slots", [("sgd_plain", 0), ("sgd_decay", 1), ("adam", 2), ("rmsprop", 1),
                                         ("rmsprop_momentum", 2), ("adagrad", 1), ("schedule", 1)])
def test_optimizer_variables_follow_keras_order(name, slots):
    model = seed_model(OPTIMIZERS[name]())
    model.fit(*xor_data(50), epochs=1, batch_size=10, verbose=0)
    values = saving.optimizer_variables(model)
    keras_lr_variable = name not in ("sgd_decay", "schedule")  # a decay is a schedule for Keras
    assert values[0].dtype == np.int32 and int(values[0]) == 5
    if keras_lr_variable:
        assert values[1].dtype == np.float32 and values[1] == np.float32(model.optimizer.learning_rate)
    shapes = [v.shape for v in values[1 + keras_lr_variable:]]
    weight_shapes = [w.shape for w in model.weights]
    if name == "adam":  # momentum and velocity interleaved per weight
        assert shapes == [s for s in weight_shapes for _ in range(2)]
        engine = model._engine
        np.testing.assert_array_equal(values[2], engine.weight_views("velocity")[0])
        np.testing.assert_array_equal(values[3], engine.weight_views("second")[0])
    else:  # every slot of one kind, then the next kind
        assert shapes == weight_shapes * slots


# ---- Keras 3 -> fastmlp ----


@pytest.mark.parametrize("case", KERAS_CASES)
def test_keras_files_load_predict_and_continue_training_as_keras(case):
    expected = np.load(os.path.join(FIXTURES, "expected.npz"))
    model = load_model(os.path.join(FIXTURES, f"{case}.keras"))
    # Keras computes on torch, fastmlp natively: float32 rounding, well inside the 1e-6 of the issue.
    np.testing.assert_allclose(model.predict(expected[f"{case}/probe"]), expected[f"{case}/pred"], rtol=0, atol=1e-6)
    assert model.optimizer.iterations == int(expected[f"{case}/iterations"])
    model.fit(expected[f"{case}/x2"], expected[f"{case}/y2"], batch_size=int(expected[f"{case}/batch_size"]),
              epochs=1, shuffle=False, verbose=0)
    # Keras's weights after one more epoch: equal only if the optimizer state was taken over.
    for i, w in enumerate(model.get_weights()):
        np.testing.assert_allclose(w, expected[f"{case}/after_w{i}"], rtol=0, atol=1e-6)


def test_keras_file_settings_are_read():
    model = load_model(os.path.join(FIXTURES, "adam_flatten.keras"))
    assert [type(layer).__name__ for layer in model.layers] == ["Flatten", "Dense", "Activation", "Dense"]
    assert model._sample_shape == (2, 3) and model.layers[3].kernel_regularizer.l2 == pytest.approx(0.01)
    assert model._compile_args["metrics"] == ["accuracy", "mae"] and model._loss.label_smoothing == pytest.approx(0.1)
    rms = load_model(os.path.join(FIXTURES, "rmsprop_sparse.keras"))
    assert rms._loss.from_logits and rms.optimizer.momentum == 0.5
    ada = load_model(os.path.join(FIXTURES, "adagrad_schedule.keras"))
    assert isinstance(ada.optimizer.learning_rate, optimizers.schedules.ExponentialDecay)
    assert load_model(os.path.join(FIXTURES, "float64.keras")).predict(np.zeros((1, 3))).dtype == np.float64


def test_keras_weights_file_loads_into_a_fastmlp_model():
    expected = np.load(os.path.join(FIXTURES, "expected.npz"))
    model = Sequential([layers.Dense(4, activation="relu", input_dim=2), layers.Dense(4, activation="relu"),
                        layers.Dense(2, activation="softmax")])
    model.compile(loss="categorical_crossentropy", optimizer=optimizers.SGD(0.05, momentum=0.9))
    model.load_weights(os.path.join(FIXTURES, "sgd_momentum.weights.h5"))
    np.testing.assert_allclose(model.predict(expected["sgd_momentum/probe"]), expected["sgd_momentum/pred"], atol=1e-6)
    assert model.optimizer.iterations == int(expected["sgd_momentum/iterations"])


def test_unsupported_layers_are_named():
    with pytest.raises(ValueError, match=r"unsupported\.keras: .*unsupported: 'layer_normalization' "
                                         r"\(LayerNormalization\)\.$"):
        load_model(os.path.join(FIXTURES, "unsupported.keras"))


def keras_config():
    return json.loads(zipfile.ZipFile(os.path.join(FIXTURES, "sgd_momentum.keras")).read("config.json"))


def test_unneeded_keras_keys_are_ignored_and_unsupported_settings_refused():
    config = keras_config()["config"]
    dense = config["layers"][1]["config"]
    dense.update(lora_rank=None, some_future_option=None)
    assert [layer.units for layer in Sequential.from_config(config).layers] == [4, 4, 2]
    for key, value, match in (("kernel_constraint", {"class_name": "NonNeg", "config": {}}, "kernel_constraint"),
                              ("trainable", False, "trainable=False"), ("activation", "relu6", "relu6"),
                              ("dtype", "mixed_float16", "mixed_float16")):
        broken = keras_config()["config"]
        broken["layers"][1]["config"][key] = value
        with pytest.raises(ValueError, match=match):
            Sequential.from_config(broken)
    compile_config = keras_config()["compile_config"]
    for key, value, match in (("use_ema", True, "use_ema=True"), ("weight_decay", 0.1, "weight_decay=0.1")):
        optimizer = dict(compile_config["optimizer"], config=dict(compile_config["optimizer"]["config"], **{key: value}))
        with pytest.raises(ValueError, match=match):
            optimizers.deserialize(optimizer)
    with pytest.raises(ValueError, match="reduction='sum'"):
        losses.deserialize({"class_name": "MeanSquaredError", "config": {"reduction": "sum"}})


# ---- corrupt files, atomic writes, errors ----


def trained(tmp_path):
    model = seed_model(optimizers.Adam(0.01))
    model.fit(*xor_data(100), epochs=2, batch_size=16, verbose=0)
    model.save(tmp_path / "good.keras")
    model.save_weights(tmp_path / "good.weights.h5")
    return model


def snapshot(model):
    return model.get_weights(), optimizer_state(model), (model._shuffle_seed, model._shuffle_epochs)


def rezip(source, target, replace):
    """Copy the zip `source` to `target`, replacing members by name (None drops one)."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for name in zin.namelist():
            data = replace.get(name, zin.read(name))
            if data is not None:
                zout.writestr(name, data)


def corrupt_files(tmp_path):
    good = (tmp_path / "good.keras").read_bytes()
    weights = (tmp_path / "good.weights.h5").read_bytes()
    files = {
        "truncated.keras": (good[: len(good) // 2], "not a zip archive, or it is truncated"),
        "garbage.keras": (b"not a zip file at all", "not a zip archive"),
        "truncated.weights.h5": (weights[: len(weights) // 2], "not a valid HDF5"),
    }
    flipped = bytearray(good)
    at = good.index(b"\x89HDF") + 3000
    flipped[at : at + 8] = bytes(b ^ 0xFF for b in flipped[at : at + 8])  # caught by the zip's CRC
    files["crc.keras"] = (bytes(flipped), "truncated or corrupt")
    for path in files:
        (tmp_path / path).write_bytes(files[path][0])
    source = tmp_path / "good.keras"
    rezip(source, tmp_path / "noweights.keras", {"model.weights.h5": None})
    files["noweights.keras"] = (None, "has no model.weights.h5")
    rezip(source, tmp_path / "badjson.keras", {"config.json": b"{not json"})
    files["badjson.keras"] = (None, "config.json is not valid JSON")
    rezip(source, tmp_path / "badh5.keras", {"model.weights.h5": weights[:100]})
    files["badh5.keras"] = (None, "not a valid HDF5")
    return files


def test_corrupt_files_raise_a_clear_error_and_change_nothing(tmp_path):
    model = trained(tmp_path)
    before = snapshot(model)
    for name, (_, match) in corrupt_files(tmp_path).items():
        path = str(tmp_path / name)
        if name.endswith(".keras"):
            with pytest.raises(ValueError, match=match) as info:
                load_model(path)
            assert path in str(info.value)
        with pytest.raises(ValueError, match=match) as info:
            model.load_weights(path)
        assert path in str(info.value)
        after = snapshot(model)
        assert_same_weights(after[0], before[0])
        assert_same_weights(after[1], before[1])
        assert after[2] == before[2]


def test_a_mismatched_file_changes_nothing(tmp_path):
    model = trained(tmp_path)
    other = Sequential([layers.Dense(4, activation="relu", input_dim=2), layers.Dense(5, activation="relu"),
                        layers.Dense(2, activation="softmax")])
    other.compile(loss="binary_crossentropy", optimizer="adam")
    other.save(tmp_path / "other.keras")
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"layers/dense_1/vars/0 \(layer .*\) has shape \(4, 5\) in the file; "
                                         r"the model expects \(4, 4\)"):
        model.load_weights(tmp_path / "other.keras")
    assert_same_weights(model.get_weights(), before[0])
    assert_same_weights(optimizer_state(model), before[1])
    with pytest.warns(UserWarning, match="Skipping") as caught:
        model.load_weights(tmp_path / "other.keras", skip_mismatch=True)
    assert sorted(str(w.message).split(" ")[1] for w in caught) == ["loading", "loading", "variable"]
    assert_same_weights(model.get_weights()[2:6], before[0][2:6])  # the mismatched layers are kept
    np.testing.assert_array_equal(model.get_weights()[0], other.get_weights()[0])  # the matching one loaded
    assert_same_weights(optimizer_state(model), before[1])


def test_writes_are_atomic(tmp_path, monkeypatch):
    model = trained(tmp_path)
    good = (tmp_path / "good.keras").read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        model.save(tmp_path / "good.keras")
    monkeypatch.undo()
    assert (tmp_path / "good.keras").read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ["good.keras", "good.weights.h5"]  # no temporary file left
    model.fit(*xor_data(100), epochs=1, verbose=0)
    model.save(tmp_path / "good.keras")
    assert (tmp_path / "good.keras").read_bytes() != good
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "good.keras").st_mode) == 0o666 & ~umask


def test_saving_errors(tmp_path):
    model = trained(tmp_path)
    with pytest.raises(FileExistsError):
        model.save(tmp_path / "good.keras", overwrite=False)
    with pytest.raises(ValueError, match="ending in `.keras`"):
        model.save(tmp_path / "m.h5")
    with pytest.raises(ValueError, match="must end in `.weights.h5`"):
        model.save_weights(tmp_path / "m.h5")
    with pytest.raises(ValueError, match="File format not supported"):
        load_model(tmp_path / "good.weights.h5")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.keras")
    with pytest.raises(ValueError, match="not yet been built"):
        Sequential([layers.Dense(2)]).load_weights(tmp_path / "good.weights.h5")
