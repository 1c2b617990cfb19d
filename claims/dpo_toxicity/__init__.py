"""Pack ``dpo-toxicity``: how DPO reduced toxicity, neuron by neuron.

Yang et al., "How Does DPO Reduce Toxicity? A Mechanistic Neuron-Level Analysis" (EMNLP 2025;
arXiv 2411.06424, first titled "Beyond Toxic Neurons"), and the claims of Lee et al. (ICML 2024)
it builds on. ``pytest claims/dpo_toxicity`` runs this pack alone.
"""

from mechclaims.claim import Pack, Paper, register_pack

PACK = register_pack(Pack(
    id="dpo-toxicity",
    title="How DPO reduces toxicity (neuron-level)",
    description="DPO does not work by dampening a few toxic neurons but by small shifts across most "
                "MLP neurons in four groups; patching them replicates DPO.",
    papers=(
        Paper(title="How Does DPO Reduce Toxicity? A Mechanistic Neuron-Level Analysis",
              authors="Yang et al.", arxiv="2411.06424", venue="EMNLP 2025",
              code="github.com/Yushi-Y/dpo-toxic-neurons"),
        Paper(title="A Mechanistic Understanding of Alignment Algorithms: A Case Study on DPO and Toxicity",
              authors="Lee et al.", arxiv="2401.01967", venue="ICML 2024",
              code="github.com/ajyl/dpo_toxic"),
    ),
))
