//! The ring-0 part of every guest: multiboot header, 32-bit entry, switch
//! to long mode, drop to ring 3, interrupt/exception stubs and the AP
//! start-up path.
//!
//! Ring-0 code is emulated instruction by instruction on some hosts (about
//! 1.5 us per instruction), so everything here is as short as possible and
//! uses no SSE, no `int3`, no VEX and no string loops.
//!
//! Entry state (multiboot v1): 32-bit protected mode, paging off, flat
//! CS/DS, IF=0, EAX=0x2BADB002, EBX=info block. Nothing else is trusted: no
//! GDT, no stack. The stub stores EAX/EBX, loads its own GDT, enables PAE
//! paging with the compile-time tables at 0x101000, enables long mode,
//! loads segments, TR and IDTR, sets TSS.RSP0 and `iretq`s to
//! `guest_rust_start` at CPL3 with IOPL=3 and IF=0.
//!
//! Port I/O and `cli`/`sti` at CPL3 normally just work through IOPL=3. On
//! hypervisors that run guest ring 3 natively with the hardware IOPL forced
//! to 0 (kvm_pvm), `in`/`out` fault and are emulated by KVM, which then
//! consults the TSS I/O bitmap (all ports allowed, see `rt::sys`), and
//! `cli`/`sti` raise #GP, which the #GP handler below emulates.
//!
//! Interrupt vectors (IDT filled from ring 3 by `rt::sys::fill_idt`, each
//! stub 16 bytes at `guest_isr_stubs + 16 * vector`):
//! - 0..31: print `guest: exception V error E rip R cr2 C` on COM1, write 3
//!   to the exit port, halt. (#GP first checks for a ring-3 `cli`/`sti`.)
//! - 32..254: increment `IRQ_COUNTS[vector]`, LAPIC EOI, `iretq`.
//! - 255 (LAPIC spurious): `iretq`.

use crate::rt::sys;

core::arch::global_asm!(
    r#"
    .section .multiboot, "a"
    .balign 4
guest_multiboot_header:
    .long 0x1BADB002
    .long 0x00000003
    .long -(0x1BADB002 + 0x00000003)

/* ---------------- 32-bit entry (BSP from the loader, APs from the trampoline) */
    .section .text.boot32, "ax"
    .code32
    .globl _start
_start:
    cli
    movl %eax, {mb_magic}
    movl %ebx, {mb_info}
    xorl %edi, %edi
    lgdt guest_gdtr
    jmp guest_enter_long

    .globl guest_ap_entry32
guest_ap_entry32:
    movl ${sel_kdata}, %eax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl $1, %edi

/* edi = 0 for the BSP, 1 for an AP. GDT loaded. */
guest_enter_long:
    movl %cr4, %eax
    orl $0x620, %eax            /* PAE | OSFXSR | OSXMMEXCPT */
    movl %eax, %cr4
    movl ${pml4}, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx      /* EFER */
    rdmsr
    orl $0x100, %eax            /* LME */
    wrmsr
    movl %cr0, %eax
    andl $0x9FFFFFF3, %eax      /* clear CD, NW, TS, EM */
    orl $0x80000023, %eax       /* PG | NE | MP | PE */
    movl %eax, %cr0
    ljmpl ${sel_kcode64}, $guest_long64

    .balign 8
guest_gdtr:
    .word {gdt_limit}
    .quad {gdt}
    .balign 8
guest_idtr:
    .word {idt_limit}
    .quad {idt}

/* ---------------- 64-bit ring-0 code */
    .section .text.boot64, "ax"
    .code64
guest_long64:
    movl ${sel_kdata}, %eax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorl %eax, %eax
    movw %ax, %fs
    movw %ax, %gs
    lidt guest_idtr(%rip)
    testl %edi, %edi
    jnz guest_ap64

    leaq {boot_stack}+{boot_stack_size}(%rip), %rsp
    movq %rsp, {tss_rsp0}
    movw ${sel_tss}, %ax
    ltr %ax
    pushq ${sel_udata}
    leaq {user_stack}+{user_stack_size}-8(%rip), %rax
    pushq %rax
    pushq $0x3002               /* IOPL=3, IF=0 */
    pushq ${sel_ucode}
    leaq {rust_start}(%rip), %rax
    pushq %rax
    iretq

/* AP: stack by APIC id, mark online, local APIC on (spurious vector 0xff),
   then idle forever with interrupts on, counting wake-ups in
   AP_WAKEUPS[APIC id] (kept in ebx, which the interrupt stubs preserve). */
guest_ap64:
    movl $0xfee00020, %ecx
    movl (%rcx), %eax
    shrl $24, %eax
    movl %eax, %ebx
    leal 1(%eax), %ecx
    shll ${ap_stack_shift}, %ecx
    leaq {ap_stacks}(%rip), %rsp
    addq %rcx, %rsp
    movl %eax, %ecx
    shrl $6, %ecx
    andl $63, %eax
    leaq {ap_online}(%rip), %rdx
    lock btsq %rax, (%rdx,%rcx,8)
    movl $0xfee000f0, %ecx
    movl $0x1ff, (%rcx)
    lock incl {ap_count}(%rip)
    leaq {ap_wakeups}(%rip), %rsi
1:  sti
    hlt
    lock incl (%rsi,%rbx,4)
    jmp 1b

/* ---------------- interrupt stubs: 256 x 16 bytes */
    .balign 16
    .globl guest_isr_stubs
guest_isr_stubs:
    .set guest_vec, 0
    .rept 32
    .balign 16
    .if guest_vec == 13
    jmp guest_gp_handler
    .else
    .if (guest_vec == 8) || ((guest_vec >= 10) && (guest_vec <= 14)) || (guest_vec == 17) || (guest_vec == 21) || (guest_vec == 29) || (guest_vec == 30)
    .else
    pushq $0                    /* no CPU error code: push a dummy one */
    .endif
    pushq $guest_vec
    jmp guest_exception_common
    .endif
    .set guest_vec, guest_vec + 1
    .endr
    .rept 223
    .balign 16
    lock incl {irq_counts}+4*guest_vec(%rip)
    jmp guest_irq_common
    .set guest_vec, guest_vec + 1
    .endr
    .balign 16
    iretq                       /* 0xff: spurious, no EOI */
    .balign 16
guest_isr_stubs_end:

guest_irq_common:
    pushq %rax
    movl $0xfee000b0, %eax      /* LAPIC EOI */
    movl $0, (%rax)
    popq %rax
    iretq

/* #GP: [rsp] = error code, [rsp+8] = rip, [rsp+16] = cs, [rsp+24] = rflags.
   A `cli` (0xfa) or `sti` (0xfb) at CPL3 that faulted is emulated: some
   hypervisors (kvm_pvm) run ring 3 natively with the hardware IOPL forced to
   0, so these raise #GP despite the guest's IOPL=3. Anything else is fatal. */
guest_gp_handler:
    testb $3, 16(%rsp)
    jz 2f
    pushq %rax
    movq 16(%rsp), %rax
    movb (%rax), %al
    cmpb $0xfa, %al
    je 3f
    cmpb $0xfb, %al
    je 4f
    popq %rax
2:  pushq $13
    jmp guest_exception_common
3:  andq $~0x200, 32(%rsp)
    jmp 5f
4:  orq $0x200, 32(%rsp)
5:  incq 16(%rsp)
    popq %rax
    addq $8, %rsp
    iretq

/* [rsp] = vector, [rsp+8] = error code, [rsp+16] = rip */
guest_exception_common:
    movq %rsp, %rbx
    leaq guest_msg_exc(%rip), %rsi
    call guest_puts
    movq (%rbx), %rax
    call guest_puthex
    leaq guest_msg_err(%rip), %rsi
    call guest_puts
    movq 8(%rbx), %rax
    call guest_puthex
    leaq guest_msg_rip(%rip), %rsi
    call guest_puts
    movq 16(%rbx), %rax
    call guest_puthex
    leaq guest_msg_cr2(%rip), %rsi
    call guest_puts
    movq %cr2, %rax
    call guest_puthex
    movb $10, %al
    call guest_putc
    movl $3, %eax
    movw $0xf4, %dx
    outl %eax, %dx
1:  cli
    hlt
    jmp 1b

/* rsi = NUL-terminated string */
guest_puts:
1:  movb (%rsi), %al
    testb %al, %al
    jz 2f
    call guest_putc
    incq %rsi
    jmp 1b
2:  ret

/* al = byte; clobbers ecx, edx */
guest_putc:
    movb %al, %cl
    movw $0x3fd, %dx
1:  inb %dx, %al
    testb $0x20, %al
    jz 1b
    movw $0x3f8, %dx
    movb %cl, %al
    outb %al, %dx
    ret

/* rax = value, printed as 0x + 16 hex digits; clobbers r8, r9, ecx, edx */
guest_puthex:
    movq %rax, %r9
    movb $0x30, %al
    call guest_putc
    movb $0x78, %al
    call guest_putc
    movl $16, %r8d
1:  rolq $4, %r9
    movl %r9d, %eax
    andl $15, %eax
    cmpb $10, %al
    jb 2f
    addb $0x27, %al
2:  addb $0x30, %al
    call guest_putc
    decl %r8d
    jnz 1b
    ret

guest_msg_exc: .asciz "guest: exception "
guest_msg_err: .asciz " error "
guest_msg_rip: .asciz " rip "
guest_msg_cr2: .asciz " cr2 "

/* ---------------- AP trampoline: copied to a page below 1 MiB, started by
   SIPI with CS = page >> 4, IP = 0. Real mode -> protected mode, then the
   shared 32-bit path above. */
    .section .rodata.guest_ap_trampoline, "a"
    .balign 16
    .code16
    .globl guest_ap_trampoline_start
guest_ap_trampoline_start:
    cli
    movw %cs, %ax
    movw %ax, %ds
    lgdtl guest_ap_gdtr - guest_ap_trampoline_start
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    .byte 0x66, 0xea            /* ljmpl $sel_kcode32, $guest_ap_entry32 */
    .long guest_ap_entry32
    .word {sel_kcode32}
    .balign 8
guest_ap_gdtr:
    .word {gdt_limit}
    .long {gdt}
    .globl guest_ap_trampoline_end
guest_ap_trampoline_end:
    .code64
    .text
"#,
    mb_magic = sym sys::MB_MAGIC,
    mb_info = sym sys::MB_INFO,
    sel_kdata = const sys::SEL_KERNEL_DATA,
    sel_kcode64 = const sys::SEL_KERNEL_CODE64,
    sel_kcode32 = const sys::SEL_KERNEL_CODE32,
    sel_udata = const sys::SEL_USER_DATA,
    sel_ucode = const sys::SEL_USER_CODE64,
    sel_tss = const sys::SEL_TSS,
    pml4 = const sys::PML4_ADDR,
    gdt = const sys::GDT_ADDR,
    gdt_limit = const sys::GDT_LIMIT,
    idt = const sys::IDT_ADDR,
    idt_limit = const sys::IDT_LIMIT,
    tss_rsp0 = const sys::TSS_ADDR + 4,
    boot_stack = sym sys::BOOT_STACK,
    boot_stack_size = const sys::BOOT_STACK_SIZE,
    user_stack = sym sys::USER_STACK,
    user_stack_size = const sys::USER_STACK_SIZE,
    ap_stacks = sym sys::AP_STACKS,
    ap_stack_shift = const sys::AP_STACK_SHIFT,
    ap_online = sym sys::AP_ONLINE,
    ap_count = sym sys::AP_COUNT,
    ap_wakeups = sym sys::AP_WAKEUPS,
    irq_counts = sym sys::IRQ_COUNTS,
    rust_start = sym crate::rt::guest_rust_start,
    options(att_syntax),
);
