"""Allowlists of the pickle globals a model format legitimately needs.

``bastion scan`` decides by allowlist, not denylist: a global (``GLOBAL``, ``STACK_GLOBAL``,
``INST``) is accepted only when it is named here, so a new gadget is a finding by default.
Denylist scanners keep being bypassed by globals nobody listed (JFrog, "Data Scientists
Targeted by Malicious Hugging Face ML Models", 2024; Zhu et al., "My Model is Malware to
You", 2025). The ``core`` profile mirrors what PyTorch's own restricted loader accepts
(``torch/_weights_only_unpickler.py``, ``_get_allowed_globals``), plus numpy array
reconstruction and plain collections; the opt-in profiles add classes whose instances are
rebuilt from data (``cls.__new__`` then ``__setstate__``/``__dict__`` update, or an
``__init__`` that only stores its arguments).

Names are matched exactly as ``module.name``. A name with a dot (protocol 4 attribute
traversal, ``torch`` + ``_utils.os.system``) is never allowed, and there are no wildcards
over whole packages: ``sklearn`` and ``torch`` modules re-export ``threading.Thread``,
``multiprocessing.connection.Client``, ``tempfile.NamedTemporaryFile``,
``torch.jit.CompilationUnit`` and the like under their own names, so a package wildcard would
be a bypass. Python 2 names (``__builtin__``, ``copy_reg``) are mapped to Python 3 ones as the
unpickler does (``_compat_pickle``).
"""

from __future__ import annotations

import _compat_pickle
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

from bastion.errors import ConfigError


def _names(module: str, names: str) -> frozenset[str]:
    return frozenset(f"{module}.{n}" for n in names.split())


def _table(table: dict[str, str]) -> frozenset[str]:
    return frozenset().union(*(_names(m, n) for m, n in table.items()))


_TORCH_DTYPES = (
    "bfloat16 bits16 bits1x8 bits2x4 bits4x2 bits8 bool complex128 complex32 complex64 float16"
    " float32 float64 float4_e2m1fn_x2 float8_e4m3fn float8_e4m3fnuz float8_e5m2"
    " float8_e5m2fnuz float8_e8m0fnu int1 int2 int3 int4 int5 int6 int7 int8 int16 int32"
    " int64 qint32 qint8 quint2x4 quint4x2 quint8 uint1 uint2 uint3 uint4 uint5 uint6 uint7"
    " uint8 uint16 uint32 uint64 per_channel_affine per_channel_affine_float_qparams"
    " per_channel_symmetric per_tensor_affine per_tensor_symmetric"
    # legacy aliases a dtype's repr may use (torch.half is torch.float16, ...)
    " half float double cfloat cdouble long int short"
)
_TENSOR_KINDS = "BFloat16 Bool Byte Char Double Float Half Int Long Short"
_STORAGE_KINDS = _TENSOR_KINDS + " ComplexDouble ComplexFloat QInt32 QInt8 QUInt2x4 QUInt4x2 QUInt8"
_TORCH_REBUILD = (
    "_rebuild_tensor _rebuild_tensor_v2 _rebuild_tensor_v3 _rebuild_parameter"
    " _rebuild_parameter_with_state _rebuild_qtensor _rebuild_sparse_tensor"
    " _rebuild_meta_tensor_no_storage _rebuild_nested_tensor _rebuild_wrapper_subclass"
    " _rebuild_device_tensor_from_numpy _rebuild_device_tensor_from_cpu_tensor"
)

#: torch: what ``torch.load(weights_only=True)`` accepts (torch 2.x ``_get_allowed_globals``):
#: tensor rebuild functions (they build a tensor view over a storage), storage and tensor
#: types (referenced in persistent ids, never executed), dtypes, quantisation schemes,
#: ``torch.Size``/``torch.device`` and the sparse layout lookup.
_CORE_TORCH = (
    _names("torch", _TORCH_DTYPES + " Size Tensor device")
    | _names("torch", " ".join(f"{k}Storage" for k in _STORAGE_KINDS.split()))
    | _names("torch", " ".join(f"{k}Tensor" for k in _TENSOR_KINDS.split()))
    | _names("torch.cuda", " ".join(f"{k}Storage" for k in _TENSOR_KINDS.split()))
    | _names("torch.cuda", " ".join(f"{k}Tensor" for k in _TENSOR_KINDS.split()))
    | _names("torch.cuda", "ComplexDoubleStorage ComplexFloatStorage")
    | _names("torch.sparse", " ".join(f"{k}Tensor" for k in _TENSOR_KINDS.split() if k != "Bool"))
    | _names(
        "torch.cuda.sparse", " ".join(f"{k}Tensor" for k in _TENSOR_KINDS.split() if k != "Bool")
    )
    | _names("torch.storage", "TypedStorage UntypedStorage")
    | _names("torch._utils", _TORCH_REBUILD)
    | _names("torch._tensor", "_rebuild_from_type_v2")
    | _names("torch.nn.parameter", "Parameter")
    | _names("torch.serialization", "_get_layout")
)

#: numpy: ``ndarray.__reduce__`` is ``_reconstruct(ndarray, (0,), b'b')`` then BUILD with
#: (version, shape, dtype, is_fortran, raw bytes); protocol 5 uses ``_frombuffer``; scalars
#: use ``scalar(dtype, bytes)``. All build arrays from bytes and run no user code. numpy 2
#: moved ``numpy.core`` to ``numpy._core``; both spellings occur in files.
_CORE_NUMPY = (
    _names(
        "numpy",
        "ndarray dtype float16 float32 float64 longdouble int8 int16 int32 int64 uint8 uint16"
        " uint32 uint64 intp uintp bool_ complex64 complex128 str_ bytes_ void datetime64"
        " timedelta64",
    )
    | _names("numpy.core.multiarray", "_reconstruct scalar")
    | _names("numpy._core.multiarray", "_reconstruct scalar")
    | _names("numpy.core.numeric", "_frombuffer")
    | _names("numpy._core.numeric", "_frombuffer")
    | _names(
        "numpy.dtypes",
        " ".join(
            f"{k}DType"
            for k in [
                "Float16",
                "Float32",
                "Float64",
                "Int8",
                "Int16",
                "Int32",
                "Int64",
                "UInt8",
                "UInt16",
                "UInt32",
                "UInt64",
                "Bool",
                "Complex64",
                "Complex128",
                "Str",
                "Bytes",
                "Void",
                "Object",
                "DateTime64",
                "TimeDelta64",
            ]
        ),
    )
)

#: Plain data types: containers and numbers whose construction runs no code of the file's
#: choosing. ``_codecs.encode`` is how protocol 2 writes ``bytes`` (``encode(str,
#: 'latin1')``); torch allows it too. ``builtins.object`` is the base ``copyreg`` needs.
_CORE_PLAIN = (
    _names("collections", "OrderedDict Counter defaultdict deque")
    | _names(
        "builtins",
        "set frozenset bytearray bytes slice complex range object int float str bool list"
        " dict tuple",
    )
    | _names("_codecs", "encode")
)

#: Globals that run code, reach the operating system or load further pickles: a reference
#: to one of them is always ``critical``. Allowlisting does not consult this set; it only
#: words the finding (``pickle.global``'s severity and ``why``).
DANGEROUS_MODULES: frozenset[str] = frozenset(
    [
        "os",
        "posix",
        "nt",
        "sys",
        "subprocess",
        "importlib",
        "runpy",
        "pickle",
        "_pickle",
        "cPickle",
        "dill",
        "cloudpickle",
        "shutil",
        "socket",
        "webbrowser",
        "pty",
        "code",
        "codeop",
        "ctypes",
        "marshal",
        "timeit",
        "pydoc",
        "bdb",
        "pdb",
        "multiprocessing",
        "threading",
        "asyncio",
        "signal",
        "types",
        "imp",
        "zipimport",
        "urllib",
        "http",
        "ftplib",
        "smtplib",
        "telnetlib",
        "requests",
        "httpx",
        "tempfile",
        "glob",
        "pathlib",
        "io",
        "_io",
        "torch.hub",
        "torch.jit",
        "torch._dynamo",
        "torch.package",
        "torch.utils.cpp_extension",
        "joblib.parallel",
        "numpy.testing",
        "numpy.f2py",
        "numpy.distutils",
        "_posixsubprocess",
        "_thread",
    ]
)
DANGEROUS_NAMES: frozenset[str] = frozenset(
    [
        "builtins.eval",
        "builtins.exec",
        "builtins.compile",
        "builtins.getattr",
        "builtins.setattr",
        "builtins.delattr",
        "builtins.__import__",
        "builtins.open",
        "builtins.apply",
        "builtins.execfile",
        "builtins.input",
        "builtins.breakpoint",
        "builtins.globals",
        "builtins.locals",
        "builtins.vars",
        "builtins.memoryview",
        "builtins.type",
        "builtins.super",
        "torch.load",
        "torch.save",
        "torch.from_file",
        "torch.storage._load_from_bytes",
        "torch.ops",
        "numpy.load",
        "numpy.save",
        "numpy.fromfile",
        "numpy.memmap",
        "numpy.lib.npyio.load",
        "numpy.ctypeslib.load_library",
        "functools.partial",
        "functools.reduce",
        "operator.attrgetter",
        "operator.methodcaller",
        "operator.itemgetter",
        "operator.call",
        "code.InteractiveInterpreter",
        "joblib.load",
        "joblib.dump",
    ]
)

# Generated from scikit-learn 1.9 / torch 2.13: classes defined in each module (estimators,
# kernels, Cython state holders; torch.nn.Module subclasses). Not package wildcards: see above.
SKLEARN_CLASSES: dict[str, str] = {
    "sklearn._loss._loss": "CyAbsoluteError CyExponentialLoss CyHalfBinomialLoss CyHalfGammaLoss CyHalfMultinomialLoss CyHalfPoissonLoss CyHalfSquaredError CyHalfTweedieLoss CyHalfTweedieLossIdentity CyHuberLoss CyLossFunction CyPinballLoss",
    "sklearn._loss.link": "BaseLink HalfLogitLink IdentityLink Interval LogLink LogitLink MultinomialLogit",
    "sklearn._loss.loss": "AbsoluteError ArrayAPILossMixin BaseLoss ExponentialLoss HalfBinomialLoss HalfBinomialLossArrayAPI HalfGammaLoss HalfMultinomialLoss HalfMultinomialLossArrayAPI HalfPoissonLoss HalfPoissonLossArrayAPI HalfSquaredError HalfTweedieLoss HalfTweedieLossIdentity HuberLoss PinballLoss",
    "sklearn.base": "BaseEstimator",
    "sklearn.calibration": "CalibratedClassifierCV _SigmoidCalibration _TemperatureScaling",
    "sklearn.cluster._affinity_propagation": "AffinityPropagation",
    "sklearn.cluster._agglomerative": "AgglomerativeClustering FeatureAgglomeration",
    "sklearn.cluster._bicluster": "BaseSpectral SpectralBiclustering SpectralCoclustering",
    "sklearn.cluster._birch": "Birch",
    "sklearn.cluster._bisect_k_means": "BisectingKMeans",
    "sklearn.cluster._dbscan": "DBSCAN",
    "sklearn.cluster._hdbscan._tree": "TreeUnionFind",
    "sklearn.cluster._hdbscan.hdbscan": "HDBSCAN",
    "sklearn.cluster._hierarchical_fast": "UnionFind WeightedEdge",
    "sklearn.cluster._kmeans": "KMeans MiniBatchKMeans _BaseKMeans",
    "sklearn.cluster._mean_shift": "MeanShift",
    "sklearn.cluster._optics": "OPTICS",
    "sklearn.cluster._spectral": "SpectralClustering",
    "sklearn.compose._column_transformer": "ColumnTransformer",
    "sklearn.compose._target": "TransformedTargetRegressor",
    "sklearn.covariance._elliptic_envelope": "EllipticEnvelope",
    "sklearn.covariance._empirical_covariance": "EmpiricalCovariance",
    "sklearn.covariance._graph_lasso": "BaseGraphicalLasso GraphicalLasso GraphicalLassoCV",
    "sklearn.covariance._robust_covariance": "MinCovDet",
    "sklearn.covariance._shrunk_covariance": "LedoitWolf OAS ShrunkCovariance",
    "sklearn.cross_decomposition._pls": "CCA PLSCanonical PLSRegression PLSSVD _PLS",
    "sklearn.decomposition._base": "_BasePCA",
    "sklearn.decomposition._dict_learning": "DictionaryLearning MiniBatchDictionaryLearning SparseCoder",
    "sklearn.decomposition._factor_analysis": "FactorAnalysis",
    "sklearn.decomposition._fastica": "FastICA",
    "sklearn.decomposition._incremental_pca": "IncrementalPCA",
    "sklearn.decomposition._kernel_pca": "KernelPCA",
    "sklearn.decomposition._lda": "LatentDirichletAllocation",
    "sklearn.decomposition._nmf": "MiniBatchNMF NMF _BaseNMF",
    "sklearn.decomposition._pca": "PCA",
    "sklearn.decomposition._sparse_pca": "MiniBatchSparsePCA SparsePCA _BaseSparsePCA",
    "sklearn.decomposition._truncated_svd": "TruncatedSVD",
    "sklearn.discriminant_analysis": "LinearDiscriminantAnalysis QuadraticDiscriminantAnalysis",
    "sklearn.dummy": "DummyClassifier DummyRegressor",
    "sklearn.ensemble._bagging": "BaggingClassifier BaggingRegressor BaseBagging",
    "sklearn.ensemble._base": "BaseEnsemble _BaseHeterogeneousEnsemble",
    "sklearn.ensemble._forest": "BaseForest ExtraTreesClassifier ExtraTreesRegressor ForestClassifier ForestRegressor RandomForestClassifier RandomForestRegressor RandomTreesEmbedding",
    "sklearn.ensemble._gb": "BaseGradientBoosting GradientBoostingClassifier GradientBoostingRegressor",
    "sklearn.ensemble._hist_gradient_boosting.binning": "_BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.common": "MonotonicConstraint",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting": "BaseHistGradientBoosting HistGradientBoostingClassifier HistGradientBoostingRegressor",
    "sklearn.ensemble._hist_gradient_boosting.grower": "TreeGrower TreeNode",
    "sklearn.ensemble._hist_gradient_boosting.histogram": "HistogramBuilder",
    "sklearn.ensemble._hist_gradient_boosting.predictor": "TreePredictor",
    "sklearn.ensemble._hist_gradient_boosting.splitting": "SplitInfo Splitter",
    "sklearn.ensemble._iforest": "IsolationForest",
    "sklearn.ensemble._stacking": "StackingClassifier StackingRegressor _BaseStacking",
    "sklearn.ensemble._voting": "VotingClassifier VotingRegressor _BaseVoting",
    "sklearn.ensemble._weight_boosting": "AdaBoostClassifier AdaBoostRegressor BaseWeightBoosting",
    "sklearn.feature_extraction._dict_vectorizer": "DictVectorizer",
    "sklearn.feature_extraction._hash": "FeatureHasher",
    "sklearn.feature_extraction.image": "PatchExtractor",
    "sklearn.feature_extraction.text": "CountVectorizer HashingVectorizer TfidfTransformer TfidfVectorizer",
    "sklearn.feature_selection._from_model": "SelectFromModel",
    "sklearn.feature_selection._rfe": "RFE RFECV",
    "sklearn.feature_selection._sequential": "SequentialFeatureSelector",
    "sklearn.feature_selection._univariate_selection": "GenericUnivariateSelect SelectFdr SelectFpr SelectFwe SelectKBest SelectPercentile _BaseFilter",
    "sklearn.feature_selection._variance_threshold": "VarianceThreshold",
    "sklearn.frozen._frozen": "FrozenEstimator",
    "sklearn.gaussian_process._gpc": "GaussianProcessClassifier _BinaryGaussianProcessClassifierLaplace",
    "sklearn.gaussian_process._gpr": "GaussianProcessRegressor",
    "sklearn.gaussian_process.kernels": "CompoundKernel ConstantKernel DotProduct ExpSineSquared Exponentiation Kernel KernelOperator Matern PairwiseKernel Product RBF RationalQuadratic Sum WhiteKernel",
    "sklearn.impute._base": "MissingIndicator SimpleImputer _BaseImputer",
    "sklearn.impute._iterative": "IterativeImputer",
    "sklearn.impute._knn": "KNNImputer",
    "sklearn.isotonic": "IsotonicRegression",
    "sklearn.kernel_approximation": "AdditiveChi2Sampler Nystroem PolynomialCountSketch RBFSampler SkewedChi2Sampler",
    "sklearn.kernel_ridge": "KernelRidge",
    "sklearn.linear_model._base": "LinearModel LinearRegression MultiOutputLinearModel",
    "sklearn.linear_model._bayes": "ARDRegression BayesianRidge",
    "sklearn.linear_model._coordinate_descent": "ElasticNet ElasticNetCV Lasso LassoCV LinearModelCV MultiTaskElasticNet MultiTaskElasticNetCV MultiTaskLasso MultiTaskLassoCV",
    "sklearn.linear_model._glm.glm": "GammaRegressor PoissonRegressor TweedieRegressor _GeneralizedLinearRegressor",
    "sklearn.linear_model._huber": "HuberRegressor",
    "sklearn.linear_model._least_angle": "Lars LarsCV LassoLars LassoLarsCV LassoLarsIC",
    "sklearn.linear_model._logistic": "LogisticRegression LogisticRegressionCV",
    "sklearn.linear_model._omp": "OrthogonalMatchingPursuit OrthogonalMatchingPursuitCV",
    "sklearn.linear_model._passive_aggressive": "PassiveAggressiveClassifier PassiveAggressiveRegressor",
    "sklearn.linear_model._perceptron": "Perceptron",
    "sklearn.linear_model._quantile": "QuantileRegressor",
    "sklearn.linear_model._ransac": "RANSACRegressor",
    "sklearn.linear_model._ridge": "Ridge RidgeCV RidgeClassifier RidgeClassifierCV _BaseRidge _BaseRidgeCV _IdentityClassifier _IdentityRegressor _RidgeGCV",
    "sklearn.linear_model._sgd_fast": "Classification EpsilonInsensitive Hinge ModifiedHuber Regression SquaredEpsilonInsensitive SquaredHinge",
    "sklearn.linear_model._stochastic_gradient": "BaseSGD BaseSGDClassifier BaseSGDRegressor SGDClassifier SGDOneClassSVM SGDRegressor",
    "sklearn.linear_model._theil_sen": "TheilSenRegressor",
    "sklearn.manifold._classical_mds": "ClassicalMDS",
    "sklearn.manifold._isomap": "Isomap",
    "sklearn.manifold._locally_linear": "LocallyLinearEmbedding",
    "sklearn.manifold._mds": "MDS",
    "sklearn.manifold._spectral_embedding": "SpectralEmbedding",
    "sklearn.manifold._t_sne": "TSNE",
    "sklearn.metrics._dist_metrics": "BrayCurtisDistance32 BrayCurtisDistance64 CanberraDistance32 CanberraDistance64 ChebyshevDistance32 ChebyshevDistance64 DiceDistance32 DiceDistance64 DistanceMetric DistanceMetric32 DistanceMetric64 EuclideanDistance32 EuclideanDistance64 HammingDistance32 HammingDistance64 HaversineDistance32 HaversineDistance64 JaccardDistance32 JaccardDistance64 KulsinskiDistance32 KulsinskiDistance64 MahalanobisDistance32 MahalanobisDistance64 ManhattanDistance32 ManhattanDistance64 MatchingDistance32 MatchingDistance64 MinkowskiDistance32 MinkowskiDistance64 PyFuncDistance32 PyFuncDistance64 RogersTanimotoDistance32 RogersTanimotoDistance64 RussellRaoDistance32 RussellRaoDistance64 SEuclideanDistance32 SEuclideanDistance64 SokalMichenerDistance32 SokalMichenerDistance64 SokalSneathDistance32 SokalSneathDistance64",
    "sklearn.metrics._pairwise_distances_reduction._argkmin": "ArgKmin32 ArgKmin64 EuclideanArgKmin32 EuclideanArgKmin64",
    "sklearn.metrics._pairwise_distances_reduction._argkmin_classmode": "ArgKminClassMode32 ArgKminClassMode64",
    "sklearn.metrics._pairwise_distances_reduction._base": "BaseDistancesReduction32 BaseDistancesReduction64",
    "sklearn.metrics._pairwise_distances_reduction._datasets_pair": "DatasetsPair32 DatasetsPair64 DenseDenseDatasetsPair32 DenseDenseDatasetsPair64 DenseSparseDatasetsPair32 DenseSparseDatasetsPair64 SparseDenseDatasetsPair32 SparseDenseDatasetsPair64 SparseSparseDatasetsPair32 SparseSparseDatasetsPair64",
    "sklearn.metrics._pairwise_distances_reduction._middle_term_computer": "DenseDenseMiddleTermComputer32 DenseDenseMiddleTermComputer64 MiddleTermComputer32 MiddleTermComputer64 SparseDenseMiddleTermComputer32 SparseDenseMiddleTermComputer64 SparseSparseMiddleTermComputer32 SparseSparseMiddleTermComputer64",
    "sklearn.metrics._pairwise_distances_reduction._radius_neighbors": "EuclideanRadiusNeighbors32 EuclideanRadiusNeighbors64 RadiusNeighbors32 RadiusNeighbors64",
    "sklearn.metrics._pairwise_distances_reduction._radius_neighbors_classmode": "RadiusNeighborsClassMode32 RadiusNeighborsClassMode64",
    "sklearn.mixture._base": "BaseMixture",
    "sklearn.mixture._bayesian_mixture": "BayesianGaussianMixture",
    "sklearn.mixture._gaussian_mixture": "GaussianMixture",
    "sklearn.model_selection._classification_threshold": "BaseThresholdClassifier FixedThresholdClassifier TunedThresholdClassifierCV",
    "sklearn.model_selection._search": "BaseSearchCV GridSearchCV RandomizedSearchCV",
    "sklearn.model_selection._search_successive_halving": "BaseSuccessiveHalving HalvingGridSearchCV HalvingRandomSearchCV",
    "sklearn.multiclass": "OneVsOneClassifier OneVsRestClassifier OutputCodeClassifier _ConstantPredictor",
    "sklearn.multioutput": "ClassifierChain MultiOutputClassifier MultiOutputRegressor RegressorChain _BaseChain _MultiOutputEstimator",
    "sklearn.naive_bayes": "BernoulliNB CategoricalNB ComplementNB GaussianNB MultinomialNB _BaseDiscreteNB _BaseNB",
    "sklearn.neighbors._ball_tree": "BallTree BallTree32 BallTree64 BinaryTree32 BinaryTree64 NeighborsHeap32 NeighborsHeap64 NodeHeap",
    "sklearn.neighbors._base": "NeighborsBase",
    "sklearn.neighbors._classification": "KNeighborsClassifier RadiusNeighborsClassifier",
    "sklearn.neighbors._graph": "KNeighborsTransformer RadiusNeighborsTransformer",
    "sklearn.neighbors._kd_tree": "BinaryTree32 BinaryTree64 KDTree KDTree32 KDTree64 NeighborsHeap32 NeighborsHeap64 NodeHeap",
    "sklearn.neighbors._kde": "KernelDensity",
    "sklearn.neighbors._lof": "LocalOutlierFactor",
    "sklearn.neighbors._nca": "NeighborhoodComponentsAnalysis",
    "sklearn.neighbors._nearest_centroid": "NearestCentroid",
    "sklearn.neighbors._quad_tree": "_QuadTree",
    "sklearn.neighbors._regression": "KNeighborsRegressor RadiusNeighborsRegressor",
    "sklearn.neighbors._unsupervised": "NearestNeighbors",
    "sklearn.neural_network._multilayer_perceptron": "BaseMultilayerPerceptron MLPClassifier MLPRegressor",
    "sklearn.neural_network._rbm": "BernoulliRBM",
    "sklearn.neural_network._stochastic_optimizers": "AdamOptimizer BaseOptimizer SGDOptimizer",
    "sklearn.pipeline": "FeatureUnion Pipeline",
    "sklearn.preprocessing._data": "Binarizer KernelCenterer MaxAbsScaler MinMaxScaler Normalizer PowerTransformer QuantileTransformer RobustScaler StandardScaler",
    "sklearn.preprocessing._discretization": "KBinsDiscretizer",
    "sklearn.preprocessing._encoders": "OneHotEncoder OrdinalEncoder _BaseEncoder",
    "sklearn.preprocessing._function_transformer": "FunctionTransformer",
    "sklearn.preprocessing._label": "LabelBinarizer LabelEncoder MultiLabelBinarizer",
    "sklearn.preprocessing._polynomial": "PolynomialFeatures SplineTransformer",
    "sklearn.preprocessing._target_encoder": "TargetEncoder",
    "sklearn.random_projection": "BaseRandomProjection GaussianRandomProjection SparseRandomProjection",
    "sklearn.semi_supervised._label_propagation": "BaseLabelPropagation LabelPropagation LabelSpreading",
    "sklearn.semi_supervised._self_training": "SelfTrainingClassifier",
    "sklearn.svm._base": "BaseLibSVM BaseSVC",
    "sklearn.svm._classes": "LinearSVC LinearSVR NuSVC NuSVR OneClassSVM SVC SVR",
    "sklearn.tree._classes": "BaseDecisionTree DecisionTreeClassifier DecisionTreeRegressor ExtraTreeClassifier ExtraTreeRegressor",
    "sklearn.tree._criterion": "ClassificationCriterion Criterion Entropy Gini MAE MSE Poisson RegressionCriterion",
    "sklearn.tree._partitioner": "DensePartitioner SparsePartitioner",
    "sklearn.tree._splitter": "BestSparseSplitter BestSplitter RandomSparseSplitter RandomSplitter Splitter",
    "sklearn.tree._tree": "BestFirstTreeBuilder DepthFirstTreeBuilder Tree TreeBuilder _AlphaPruner _CCPPruneController _PathFinder",
    "sklearn.tree._utils": "PytestWeightedFenwickTree WeightedFenwickTree",
    "sklearn.utils._bunch": "Bunch",
    "sklearn.utils._cython_blas": "BLAS_Order BLAS_Trans",
    "sklearn.utils._fast_dict": "IntFloatDict",
    "sklearn.utils._isfinite": "FiniteStatus",
    "sklearn.utils._mocking": "CheckingClassifier NoSampleWeightWrapper _MockEstimatorOnOffPrediction",
    "sklearn.utils._seq_dataset": "ArrayDataset32 ArrayDataset64 CSRDataset32 CSRDataset64 SequentialDataset32 SequentialDataset64",
    "sklearn.utils._vector_sentinel": "StdVectorSentinel StdVectorSentinelFloat64 StdVectorSentinelInt32 StdVectorSentinelInt64 StdVectorSentinelIntP",
    "sklearn.utils._weight_vector": "WeightVector32 WeightVector64",
    "sklearn.utils.metaestimators": "_BaseComposition",
}

TORCH_NN_CLASSES: dict[str, str] = {
    "torch.nn.modules.activation": "CELU ELU GELU GLU Hardshrink Hardsigmoid Hardswish Hardtanh LeakyReLU LogSigmoid LogSoftmax Mish MultiheadAttention PReLU RReLU ReLU ReLU6 SELU SiLU Sigmoid Softmax Softmax2d Softmin Softplus Softshrink Softsign Tanh Tanhshrink Threshold",
    "torch.nn.modules.adaptive": "AdaptiveLogSoftmaxWithLoss",
    "torch.nn.modules.batchnorm": "BatchNorm1d BatchNorm2d BatchNorm3d LazyBatchNorm1d LazyBatchNorm2d LazyBatchNorm3d SyncBatchNorm _BatchNorm _LazyNormBase _NormBase",
    "torch.nn.modules.channelshuffle": "ChannelShuffle",
    "torch.nn.modules.container": "Container ModuleDict ModuleList ParameterDict ParameterList Sequential",
    "torch.nn.modules.conv": "Conv1d Conv2d Conv3d ConvTranspose1d ConvTranspose2d ConvTranspose3d LazyConv1d LazyConv2d LazyConv3d LazyConvTranspose1d LazyConvTranspose2d LazyConvTranspose3d _ConvNd _ConvTransposeMixin _ConvTransposeNd",
    "torch.nn.modules.distance": "CosineSimilarity PairwiseDistance",
    "torch.nn.modules.dropout": "AlphaDropout Dropout Dropout1d Dropout2d Dropout3d FeatureAlphaDropout _DropoutNd",
    "torch.nn.modules.flatten": "Flatten Unflatten",
    "torch.nn.modules.fold": "Fold Unfold",
    "torch.nn.modules.instancenorm": "InstanceNorm1d InstanceNorm2d InstanceNorm3d LazyInstanceNorm1d LazyInstanceNorm2d LazyInstanceNorm3d _InstanceNorm",
    "torch.nn.modules.linear": "Bilinear Identity LazyLinear Linear NonDynamicallyQuantizableLinear",
    "torch.nn.modules.loss": "BCELoss BCEWithLogitsLoss CTCLoss CosineEmbeddingLoss CrossEntropyLoss GaussianNLLLoss HingeEmbeddingLoss HuberLoss KLDivLoss L1Loss LinearCrossEntropyLoss MSELoss MarginRankingLoss MultiLabelMarginLoss MultiLabelSoftMarginLoss MultiMarginLoss NLLLoss NLLLoss2d PoissonNLLLoss SmoothL1Loss SoftMarginLoss TripletMarginLoss TripletMarginWithDistanceLoss _Loss _WeightedLoss",
    "torch.nn.modules.module": "Module",
    "torch.nn.modules.normalization": "CrossMapLRN2d GroupNorm LayerNorm LocalResponseNorm RMSNorm",
    "torch.nn.modules.padding": "CircularPad1d CircularPad2d CircularPad3d ConstantPad1d ConstantPad2d ConstantPad3d ReflectionPad1d ReflectionPad2d ReflectionPad3d ReplicationPad1d ReplicationPad2d ReplicationPad3d ZeroPad1d ZeroPad2d ZeroPad3d _CircularPadNd _ConstantPadNd _ReflectionPadNd _ReplicationPadNd",
    "torch.nn.modules.pixelshuffle": "PixelShuffle PixelUnshuffle",
    "torch.nn.modules.pooling": "AdaptiveAvgPool1d AdaptiveAvgPool2d AdaptiveAvgPool3d AdaptiveMaxPool1d AdaptiveMaxPool2d AdaptiveMaxPool3d AvgPool1d AvgPool2d AvgPool3d FractionalMaxPool2d FractionalMaxPool3d LPPool1d LPPool2d LPPool3d MaxPool1d MaxPool2d MaxPool3d MaxUnpool1d MaxUnpool2d MaxUnpool3d _AdaptiveAvgPoolNd _AdaptiveMaxPoolNd _AvgPoolNd _LPPoolNd _MaxPoolNd _MaxUnpoolNd",
    "torch.nn.modules.rnn": "GRU GRUCell LSTM LSTMCell RNN RNNBase RNNCell RNNCellBase",
    "torch.nn.modules.sparse": "Embedding EmbeddingBag",
    "torch.nn.modules.transformer": "Transformer TransformerDecoder TransformerDecoderLayer TransformerEncoder TransformerEncoderLayer",
    "torch.nn.modules.upsampling": "Upsample UpsamplingBilinear2d UpsamplingNearest2d",
}

#: scikit-learn: fitted estimators pickle as ``copyreg._reconstructor(cls, object, None)`` +
#: BUILD (protocols 0-1) or NEWOBJ + BUILD (protocol 2+): the class is instantiated without
#: ``__init__`` and its ``__dict__`` restored by ``BaseEstimator.__setstate__``. The Cython
#: helpers (``Tree``, ``KDTree``, loss and distance classes) restore arrays in
#: ``__setstate__``/``__reduce__`` arguments. ``copyreg._reconstructor`` itself only calls
#: ``base.__new__(cls)`` (and ``base.__init__`` when ``base`` is not ``object``) on classes
#: that must themselves pass the allowlist. numpy random states and scipy sparse matrices
#: are what fitted estimators hold besides arrays.
_SKLEARN_EXTRA = (
    _names("copyreg", "_reconstructor")
    | _names("numpy.random._pickle", "__randomstate_ctor __generator_ctor __bit_generator_ctor")
    | _names("numpy.random.mtrand", "RandomState")
    | _names("numpy.random._generator", "Generator")
    | _names("numpy.random._mt19937", "MT19937")
    | _names("numpy.random._pcg64", "PCG64 PCG64DXSM")
    | _names("numpy.random._philox", "Philox")
    | _names("numpy.random._sfc64", "SFC64")
    | _names("numpy.random.bit_generator", "SeedSequence")
    | frozenset(
        f"scipy.sparse._{k}.{k}_{kind}"
        for k in ("csr", "csc", "coo", "bsr", "dia", "dok", "lil")
        for kind in ("matrix", "array")
    )
    | _names("scipy.sparse._base", "spmatrix sparray")
)

#: joblib: ``NumpyArrayWrapper`` (joblib >= 0.10) describes an array whose bytes follow the
#: wrapper's BUILD in the stream; ``NDArrayWrapper``/``ZNDArrayWrapper`` (older files) name a
#: sibling ``.npy`` file. Their state is plain data; joblib reads the array, nothing more.
_JOBLIB = _names("joblib.numpy_pickle", "NumpyArrayWrapper") | _names(
    "joblib.numpy_pickle_compat", "NDArrayWrapper ZNDArrayWrapper"
)

#: XGBoost / LightGBM scikit-learn wrappers: the Booster's ``__setstate__`` hands the saved
#: model bytes/text to the native library's model parser; the wrappers are estimators.
#: Written from the libraries' public class names (not installed here, so not exercised).
_XGBOOST = _names("xgboost.core", "Booster") | _names(
    "xgboost.sklearn",
    "XGBModel XGBClassifier XGBRegressor XGBRanker XGBRFClassifier XGBRFRegressor",
)
_LIGHTGBM = _names("lightgbm.basic", "Booster") | _names(
    "lightgbm.sklearn", "LGBMModel LGBMClassifier LGBMRegressor LGBMRanker"
)

CORE = "core"
_CYTHON_UNPICKLE = "__pyx_unpickle_"

#: Profile name -> fully qualified globals it allows. ``core`` is always on.
PROFILES: dict[str, frozenset[str]] = {
    CORE: _CORE_TORCH | _CORE_NUMPY | _CORE_PLAIN,
    "sklearn": _table(SKLEARN_CLASSES) | _SKLEARN_EXTRA,
    "torch-modules": _table(TORCH_NN_CLASSES) | _names("builtins", "set"),
    "joblib": _JOBLIB,
    "xgboost": _XGBOOST | _table(SKLEARN_CLASSES) | _SKLEARN_EXTRA,
    "lightgbm": _LIGHTGBM | _table(SKLEARN_CLASSES) | _SKLEARN_EXTRA,
}


_MEMO_SIZE = 4096  # decisions kept per allowlist (and for is_dangerous)


def normalise(module: str, name: str) -> tuple[str, str]:
    """Map Python 2 names to the Python 3 ones the unpickler imports (``fix_imports``)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


@dataclass(frozen=True)
class Allowlist:
    """The globals a scan accepts: exact ``module.name`` entries, plus ``module.*`` entries
    (every plain name of one module) for modules that hold data types only."""

    names: frozenset[str]
    modules: frozenset[str] = frozenset()
    profiles: tuple[str, ...] = (CORE,)
    # decisions so far (the same few globals recur in every file); bounded
    _decided: dict[tuple[str, str], bool] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def allowed(self, module: str, name: str) -> bool:
        """Whether ``GLOBAL module name`` is accepted. Dotted names (attribute traversal)
        and names that are not identifiers are never accepted."""
        key = (module, name)
        hit = self._decided.get(key)
        if hit is None:
            hit = self._allowed(module, name)
            if len(self._decided) < _MEMO_SIZE:
                self._decided[key] = hit
        return hit

    def _allowed(self, module: str, name: str) -> bool:
        module, name = normalise(module, name)
        if not name.isidentifier() or not all(p.isidentifier() for p in module.split(".")):
            return False
        if name.startswith(_CYTHON_UNPICKLE):
            # Cython's generated ``__pyx_unpickle_Cls(type, checksum, state)`` does
            # ``Cls.__new__(type)`` and restores the state: data-only when ``Cls`` is.
            name = name[len(_CYTHON_UNPICKLE) :]
        return f"{module}.{name}" in self.names or module in self.modules


@functools.lru_cache(maxsize=_MEMO_SIZE)
def is_dangerous(module: str, name: str) -> bool:
    """Whether a global is known to execute code, reach the OS or load more pickles."""
    module, name = normalise(module, name)
    full = f"{module}.{name}"
    if full in DANGEROUS_NAMES or name.split(".")[0] in {"system", "popen", "eval", "exec"}:
        return True
    parts = module.split(".")
    return any(".".join(parts[:i]) in DANGEROUS_MODULES for i in range(1, len(parts) + 1))


def allowlist(profiles: Sequence[str] = ()) -> Allowlist:
    """Build the allowlist of ``core`` plus the named opt-in ``profiles``.

    Raises :class:`~bastion.errors.ConfigError` for an unknown profile, naming the valid ones.
    """
    return _build(tuple(profiles))


@functools.lru_cache(maxsize=32)
def _build(profiles: tuple[str, ...]) -> Allowlist:
    """The allowlist for ``profiles``, built once (every file of a scan shares it)."""
    chosen = [CORE]
    for p in profiles:
        key = p.strip().lower()
        if key not in PROFILES:
            valid = ", ".join(sorted(PROFILES))
            raise ConfigError(f"unknown allowlist profile {p!r}; choose from: {valid}")
        if key not in chosen:
            chosen.append(key)
    entries = frozenset().union(*(PROFILES[k] for k in chosen))
    names = frozenset(e for e in entries if not e.endswith(".*"))
    modules = frozenset(e[:-2] for e in entries if e.endswith(".*"))
    return Allowlist(names=names, modules=modules, profiles=tuple(chosen))
