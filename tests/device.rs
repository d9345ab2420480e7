//! Choosing a device: names, errors for devices this machine cannot use, moving tensors between
//! devices, and in-place updates that never change a tensor shared elsewhere.

use darts::{Device, Tensor};

#[test]
fn device_names_parse_and_print_back() {
    for (name, device) in [
        ("cpu", Device::Cpu),
        ("emu", Device::Emu),
        ("cuda", Device::Cuda(0)),
        ("cuda:3", Device::Cuda(3)),
    ] {
        assert_eq!(Device::parse(name).unwrap(), device);
    }
    assert_eq!(Device::Cuda(3).to_string(), "cuda:3");
    for bad in ["gpu", "cuda:", "cuda:x", "CPU", ""] {
        let message = Device::parse(bad).unwrap_err().to_string();
        assert!(message.contains("unknown device"), "{bad}: {message}");
    }
}

/// A GPU that is not there is an error naming the device and the reason, not a panic.
#[test]
fn an_unusable_gpu_is_a_clear_error() {
    match Device::Cuda(0).check_available() {
        Ok(()) => println!("cuda:0 is usable here; checking cuda:4096 instead"),
        Err(e) => assert!(e.to_string().contains("cuda:0 cannot be used"), "{e}"),
    }
    let message = Device::Cuda(4096)
        .check_available()
        .unwrap_err()
        .to_string();
    assert!(message.contains("cuda:4096"), "{message}");
    assert!(Device::Emu.check_available().is_ok());
    assert!(Device::Cpu.check_available().is_ok());
}

#[test]
fn tensors_move_between_devices_unchanged() {
    let data: Vec<f32> = (0..37).map(|i| i as f32 * 0.25 - 3.0).collect();
    let host = Tensor::from_vec(data.clone(), &[37]).unwrap();
    let emu = host.to_device(Device::Emu).unwrap();
    assert_eq!(emu.device(), Device::Emu);
    assert!(emu.to_device(Device::Emu).unwrap().shares_storage(&emu));
    let back = emu.reshape(&[37, 1]).unwrap().to_host().unwrap();
    assert_eq!((back.shape(), back.data()), (&[37, 1][..], &data[..]));
    assert_eq!(
        Tensor::full_on(&[3, 5], 1.5, Device::Emu)
            .unwrap()
            .to_host()
            .unwrap()
            .to_vec(),
        vec![1.5; 15]
    );
    assert_eq!(emu.into_vec().unwrap(), data);
}

#[test]
fn in_place_updates_copy_a_shared_tensor_first() {
    for device in [Device::Cpu, Device::Emu] {
        let original = Tensor::from_vec(vec![1.0, 2.0, 3.0], &[3])
            .unwrap()
            .to_device(device)
            .unwrap();
        let mut updated = original.clone();
        match device {
            Device::Cpu => updated.host_mut().unwrap()[0] = 9.0,
            _ => {
                let exec = device.executor().unwrap().unwrap();
                let buffer = updated.device_mut().unwrap();
                exec.write(&[9.0, 9.0, 9.0], buffer).unwrap();
            }
        }
        assert!(!updated.shares_storage(&original));
        assert_eq!(original.to_host().unwrap().to_vec(), vec![1.0, 2.0, 3.0]);
        assert_eq!(updated.to_host().unwrap().data()[0], 9.0);
        // The wrong accessor for the device is an error.
        let wrong = match device {
            Device::Cpu => updated.device_mut().err(),
            _ => updated.host_mut().err(),
        };
        assert!(wrong.is_some(), "{device}");
    }
}
