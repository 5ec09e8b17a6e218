/*
 * A bzImage written in assembly: the real-mode header that the Linux x86 boot protocol defines
 * (Documentation/arch/x86/boot.rst; version 2.15, XLF_KERNEL_64) and a protected-mode part whose
 * 64-bit entry point, at offset 0x200, checks the zero page the VMM built (RSI): loader type, the
 * command line, the e820 map, the ACPI RSDP pointer and the initramfs, reporting on COM1. The
 * verdict on port 0xf4 is 0 when every check passed, 1 otherwise.
 * Built by `as --64` and `objcopy -O binary`; all data is addressed relative to RIP, so the code
 * runs wherever the VMM loads it.
 */
        .text
        .code64
        .org 0x1f1
        .byte 1                            /* setup_sects: the protected-mode part starts at 0x400 */
        .word 0                            /* root_flags */
        .long 0                            /* syssize */
        .word 0, 0, 0                      /* ram_size, vid_mode, root_dev */
        .word 0xaa55                       /* boot_flag */
        .byte 0xeb, 0x66                   /* jump */
        .ascii "HdrS"
        .word 0x020f                       /* protocol version */
        .long 0                            /* realmode_swtch */
        .word 0, 0                         /* start_sys_seg, kernel_version */
        .byte 0                            /* type_of_loader */
        .byte 1                            /* loadflags: LOADED_HIGH */
        .word 0                            /* setup_move_size */
        .long 0x100000                     /* code32_start */
        .long 0, 0, 0                      /* ramdisk_image, ramdisk_size, bootsect_kludge */
        .word 0                            /* heap_end_ptr */
        .byte 0, 0                         /* ext_loader_ver, ext_loader_type */
        .long 0                            /* cmd_line_ptr */
        .long 0x7fffffff                   /* initrd_addr_max */
        .long 0x200000                     /* kernel_alignment */
        .byte 0, 0                         /* relocatable_kernel, min_alignment */
        .word 1                            /* xloadflags: XLF_KERNEL_64 */
        .long 2047                         /* cmdline_size */

        .org 0x400                         /* the protected-mode kernel, loaded at code32_start */
        hlt                                /* startup_32 is never used */
        .org 0x600                         /* startup_64 = load address + 0x200 */
startup_64:
        mov %rsi, %rdi                     /* zero page */
        lea stack_top(%rip), %rsp
        xor %ebp, %ebp
        cmpb $0xff, 0x210(%rdi)            /* type_of_loader: "undefined" */
        je 1f
        inc %ebp
        lea bad_loader(%rip), %rsi
        call puts
1:      lea cmdline_msg(%rip), %rsi
        call puts
        mov 0x228(%rdi), %esi              /* cmd_line_ptr */
        call puts
        lea newline(%rip), %rsi
        call puts
        cmpb $0, 0x1e8(%rdi)               /* e820_entries */
        jne 2f
        inc %ebp
        lea bad_e820(%rip), %rsi
        call puts
2:      mov 0x70(%rdi), %rsi               /* acpi_rsdp_addr */
        cmpl $0x20445352, (%rsi)           /* "RSD " */
        je 3f
        inc %ebp
        lea bad_rsdp(%rip), %rsi
        call puts
3:      cmpl $0, 0x21c(%rdi)               /* ramdisk_size */
        je 4f
        lea initrd_msg(%rip), %rsi
        call puts
        mov 0x218(%rdi), %esi              /* ramdisk_image: the test's is a NUL-terminated line */
        call puts
4:      lea done_msg(%rip), %rsi
        call puts
        mov %ebp, %eax
        mov $0xf4, %dx
        outl %eax, %dx
5:      hlt
        jmp 5b

        .include "serial.inc"

cmdline_msg: .asciz "bzimage-asm: cmdline: "
newline:     .asciz "\n"
initrd_msg:  .asciz "bzimage-asm: initramfs: "
done_msg:    .asciz "bzimage-asm: done\n"
bad_loader:  .asciz "bzimage-asm: type_of_loader is not 0xff\n"
bad_e820:    .asciz "bzimage-asm: no e820 entries\n"
bad_rsdp:    .asciz "bzimage-asm: acpi_rsdp_addr does not point at an RSDP\n"
        .balign 16
        .space 1024
stack_top:
