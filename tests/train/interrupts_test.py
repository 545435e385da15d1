"""Tests for golfjax/train/interrupts.py."""

import os
import signal
import threading

import pytest

from golfjax.train import interrupts


def test_the_first_signal_requests_a_stop_the_second_ctrl_c_interrupts(capfd):
    before = signal.getsignal(signal.SIGINT)
    with interrupts.graceful() as request:
        assert not request.is_set()
        os.kill(os.getpid(), signal.SIGINT)
        assert request.is_set() and request.signal == signal.SIGINT
        assert "Ctrl-C (SIGINT): stopping after this step with a checkpoint; press Ctrl-C again" in (
            capfd.readouterr().err)
        os.kill(os.getpid(), signal.SIGTERM)  # Changes nothing.
        assert request.signal == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_sigterm_requests_a_stop_and_the_handlers_are_restored(capfd):
    before = signal.getsignal(signal.SIGTERM)
    with interrupts.graceful() as request:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # A second SIGTERM does not interrupt.
        assert request.is_set() and request.name == "SIGTERM"
    assert "SIGTERM: stopping after this step" in capfd.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before


def test_outside_the_main_thread_no_handler_is_installed():
    seen = []

    def body():
        with interrupts.graceful() as request:
            seen.append((request.is_set(), signal.getsignal(signal.SIGINT)))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [(False, signal.getsignal(signal.SIGINT))]
